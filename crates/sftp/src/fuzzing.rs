//! SFTP entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the
//! corpus-replay tests that run on stable Rust. Each takes arbitrary bytes
//! the way the product takes them from a server or a file, and must return,
//! quickly and without panicking, whatever they are.

use std::collections::HashMap;

#[cfg(feature = "fuzzing")]
use std::pin::Pin;
#[cfg(feature = "fuzzing")]
use std::task::{Context, Poll};
use std::time::Duration;

#[cfg(feature = "fuzzing")]
use tokio::io::ReadBuf;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::{self, Limits, SessionOptions, Sftp};
use crate::proto::{self, Attrs};

/// One SFTP packet body (after the length prefix), as the reply decoder,
/// the DATA fast path, the VERSION decoder and the limits reader see it.
pub fn sftp_reply(data: &[u8]) {
    if let Ok((_, reply)) = proto::decode_reply(data) {
        let _ = format!("{reply:?}");
    }
    let _ = proto::data_head(data);
    let _ = proto::decode_version(data);
    let _ = Limits::from_reply(data);
}

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok();
}

/// A whole server-to-client byte stream: the VERSION packet (or a forced
/// command's text), then length-prefixed replies, read by the session's own
/// reader until the stream ends or is refused.
pub fn sftp_stream(data: &[u8]) {
    RUNTIME.with(|rt| {
        let Some(rt) = rt else { return };
        rt.block_on(async {
            let mut rd = data;
            let Ok(body) = client::read_first_packet(&mut rd, "fuzz").await else {
                return;
            };
            let _ = proto::decode_version(&body);
            // Waiters for the first ids, so replies are also delivered.
            let mut map = HashMap::new();
            let mut receivers = Vec::new();
            for id in 0..8 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                map.insert(id, tx);
                receivers.push(rx);
            }
            let shared = client::Shared::with_waiters(map);
            client::read_replies(rd, shared, "fuzz".into()).await;
        })
    })
}

/// A whole session against a server whose replies are `data`: the
/// handshake, then every kind of request robosync makes, each reply read and
/// judged by the session's own code. The replies are released one per
/// request (see [`Scripted`]), so fuzzed replies meet the requests they
/// answer. Needs the `fuzzing` feature (tokio's paused clock).
#[cfg(feature = "fuzzing")]
pub fn sftp_session(data: &[u8]) {
    // A runtime of its own, so that no input leaves tasks behind for the
    // next; its clock is paused, so a request whose reply never comes times
    // out at once instead of after seconds.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    rt.block_on(drive_session(Scripted::new(data)));
}

/// What a session asks a server, in order (also run against a real
/// sftp-server to make the corpus).
pub async fn drive_session<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let opts = SessionOptions {
        budget_bytes: 1 << 20,
        request_timeout: Duration::from_secs(5),
    };
    let Ok(sftp) = Sftp::start(stream, "fuzz", opts).await else {
        return;
    };
    let attrs = Attrs {
        permissions: Some(0o644),
        times: Some((1, 1_700_000_000)),
        ..Attrs::default()
    };
    let _ = sftp.realpath(b".").await;
    let _ = sftp.stat(b"file").await;
    let _ = sftp.list_dir(b".").await;
    if let Ok(h) = sftp.open(b"file", proto::FXF_READ, &Attrs::default()).await {
        let _ = sftp.read(&h, 0, 4).await;
        let _ = sftp.read_and_fstat(&h, 4, 100).await;
        let _ = sftp.read(&h, 1 << 20, 100).await;
        let _ = sftp.close(&h).await;
    }
    let flags = proto::FXF_WRITE | proto::FXF_CREAT | proto::FXF_EXCL;
    if let Ok(h) = sftp.open(b".temp", flags, &Attrs::default()).await {
        let _ = sftp.write(&h, 0, bytes::Bytes::from_static(b"0123")).await;
        let _ = sftp.fsync(&h).await;
        let _ = sftp.write_stat_close(&h, 4, b"456789", Some(&attrs)).await;
    }
    let _ = sftp.rename_and_lstat(b".temp", b"landed").await;
    let _ = sftp.lstat(b"link").await;
    let _ = sftp.readlink(b"link").await;
    let _ = sftp.mkdir(b"dir", &attrs).await;
    let _ = sftp.remove(b"landed").await;
    let _ = sftp.rmdir(b"dir").await;
}

/// A server that answers from a script: the script is cut into packets by
/// their length prefixes, one packet is released per request received, and
/// the stream ends when the script does.
#[cfg(feature = "fuzzing")]
struct Scripted {
    script: Vec<u8>,
    /// Bytes released so far; read of them so far.
    released: usize,
    read: usize,
    /// Requests received and packets released.
    requests: usize,
    packets: usize,
    /// Of the request being received: header bytes seen, body bytes to skip.
    head: Vec<u8>,
    skip: usize,
    /// Woken when a request arrives.
    waker: Option<std::task::Waker>,
}

#[cfg(feature = "fuzzing")]
impl Scripted {
    fn new(script: &[u8]) -> Scripted {
        Scripted {
            script: script.to_vec(),
            released: 0,
            read: 0,
            requests: 0,
            packets: 0,
            head: Vec::new(),
            skip: 0,
            waker: None,
        }
    }

    fn release_one(&mut self) {
        let rest = &self.script[self.released..];
        let len = rest
            .first_chunk::<4>()
            .map_or(rest.len(), |h| 4 + u32::from_be_bytes(*h) as usize);
        self.released += len.min(rest.len());
        self.packets += 1;
    }
}

#[cfg(feature = "fuzzing")]
impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let s = &mut *self;
        if s.read == s.released {
            if s.released == s.script.len() {
                return Poll::Ready(Ok(())); // end of stream
            }
            if s.packets == s.requests {
                s.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            s.release_one();
        }
        let n = (s.released - s.read).min(buf.remaining());
        buf.put_slice(&s.script[s.read..s.read + n]);
        s.read += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "fuzzing")]
impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let s = &mut *self;
        // Count whole request packets by their length prefixes.
        let mut rest = data;
        while !rest.is_empty() {
            if s.skip > 0 {
                let n = s.skip.min(rest.len());
                s.skip -= n;
                rest = &rest[n..];
                continue;
            }
            s.head.push(rest[0]);
            rest = &rest[1..];
            if let Some(h) = s.head.first_chunk::<4>() {
                s.skip = u32::from_be_bytes(*h) as usize;
                s.head.clear();
                s.requests += 1;
            }
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
