//! Named remote-filesystem operations built from several requests: what a
//! caller would otherwise write again around the bare requests.

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::client::Sftp;
use crate::error::Error;
use crate::proto::{self, Attrs};

/// READs of one range kept in flight at once (32 × 255 KiB: enough to fill
/// a long link, bounded in memory).
const READS_IN_FLIGHT: usize = 32;

impl Sftp {
    /// Creates `dir` and its missing parents, like `mkdir -p`. A directory
    /// that appears meanwhile (made by another session) is fine; anything
    /// else in the way is a [`Error::Failure`].
    pub async fn mkdir_p(&self, dir: &[u8]) -> Result<(), Error> {
        if dir.is_empty() || dir == b"/" {
            return Ok(());
        }
        match self.lstat(dir).await {
            Ok(a) if a.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(Error::from_status(
                    "mkdir",
                    dir,
                    proto::FX_FAILURE,
                    "exists and is not a directory".into(),
                ))
            }
            Err(_) => {}
        }
        Box::pin(self.mkdir_p(parent(dir))).await?;
        match self.mkdir(dir, &Attrs::default()).await {
            Ok(()) => Ok(()),
            Err(e) => match self.lstat(dir).await {
                Ok(a) if a.is_dir() => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Reads `len` bytes of `path` from `offset`, many READs in flight; a
    /// file that ends sooner gives fewer bytes.
    pub async fn read_range(&self, path: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let h = self.open(path, proto::FXF_READ, &Attrs::default()).await?;
        let chunk = self.limits.max_read as u64;
        let reads = (0..len.div_ceil(chunk)).map(|k| {
            let off = offset + k * chunk;
            let want = chunk.min(offset + len - off) as u32;
            let h = &h;
            async move { self.read(h, off, want).await }
        });
        let parts = stream::iter(reads)
            .buffered(READS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await;
        self.close_detached(&h);
        let mut out = Vec::with_capacity(len as usize);
        for p in parts? {
            out.extend_from_slice(&p.unwrap_or_default());
        }
        Ok(out)
    }
}

/// The directory part of `p` (`""` for a name without one).
fn parent(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &p[..i],
        None => b"",
    }
}
