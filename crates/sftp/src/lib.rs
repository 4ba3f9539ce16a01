//! robosync-sftp: SFTP version 3 over any byte stream, with no SSH in it.
//!
//! Brief overview: [`proto`] is the I/O-free codec (bytes in, typed packets
//! out; handles and names stay raw bytes). [`Sftp`] runs one session over a
//! reader (any `AsyncRead`) and a [`Carrier`] (two methods: send whole
//! packets, close), keeping many requests in flight under a byte budget;
//! replies are matched by id, a silent server times out and a dead carrier
//! fails everything in flight at once; a few named operations (`mkdir_p`,
//! `read_range`) are built on the requests. Errors are typed ([`Error`]): the
//! server's refusals by status (`NoSuchFile`, `PermissionDenied`,
//! `Failure`, `Unsupported`, …) and the link's failures (`ConnectionLost`,
//! `Timeout`, `Protocol`), with [`Error::is_transient`] decided by variant.
//!
//! The SSH side (a russh channel, an `ssh -s sftp` child) lives in
//! robosync-transport, which implements [`Carrier`] for its channels. With
//! the `testing` feature, [`testing`] offers an in-memory SFTP server over
//! `tokio::io::duplex`, hostile modes included, so session code is tested
//! in milliseconds without sshd.
//!
//! ```no_run
//! # async fn f() -> Result<(), robosync_sftp::Error> {
//! let (ours, theirs) = tokio::io::duplex(1 << 20);
//! # drop(theirs);
//! let s = robosync_sftp::Sftp::start(ours, "peer", Default::default()).await?;
//! let names = s.list_dir(b".").await?;
//! # let _ = names; Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod carrier;
pub mod client;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ops;
pub mod proto;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use carrier::{Carrier, StreamCarrier};
pub use client::{safe_name, Extensions, Limits, SessionOptions, Sftp};
pub use error::{Error, Status};
