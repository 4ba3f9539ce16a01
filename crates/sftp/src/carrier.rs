//! What carries a session's bytes: any byte stream to read replies from,
//! and a [`Carrier`] that takes whole outgoing packets.
//!
//! Why not just `AsyncWrite`: a carrier that can take a packet as owned
//! `Bytes` (robosync-transport's russh channel) saves a copy per byte sent
//! (2.6% of a 1 GiB push's CPU, perf); a plain stream ([`StreamCarrier`])
//! copies as before.

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The sending side of a session: two methods, so an SSH channel, a child's
/// stdin or an in-memory pipe can carry SFTP.
pub trait Carrier: Send + 'static {
    /// Sends `parts` back to back: one or more whole packets. An error means
    /// the carrier is gone (the session then ends).
    fn send(&mut self, parts: Vec<Bytes>) -> impl Future<Output = std::io::Result<()>> + Send;

    /// The session is over: release the carrier (a channel is closed, so the
    /// server's sftp-server exits).
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized;
}

/// A [`Carrier`] over any byte stream's writing half (an `ssh -s sftp`
/// child's stdin, one end of `tokio::io::duplex`); closing shuts it down.
pub struct StreamCarrier<W>(pub W);

impl<W: AsyncWrite + Send + Unpin + 'static> Carrier for StreamCarrier<W> {
    async fn send(&mut self, parts: Vec<Bytes>) -> std::io::Result<()> {
        for part in parts {
            self.0.write_all(&part).await?;
        }
        Ok(())
    }

    async fn close(mut self) {
        let _ = self.0.shutdown().await;
    }
}
