//! Command-line endpoints: `PATH` or `[user@]host:PATH`, scp/rsync style.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Local(PathBuf),
    Remote {
        user: Option<String>,
        host: String,
        /// As typed (bytes); empty means the login directory.
        path: Vec<u8>,
    },
}

impl Endpoint {
    /// rsync's rule: a colon before any slash makes it remote; `./a:b` is local.
    pub fn parse(arg: &OsString) -> Result<Endpoint, String> {
        let bytes = arg.as_bytes();
        let colon = bytes.iter().position(|&b| b == b':');
        let slash = bytes.iter().position(|&b| b == b'/');
        let remote = match (colon, slash) {
            (Some(c), Some(s)) => c < s,
            (Some(_), None) => true,
            _ => false,
        };
        // `[::1]:path` style for IPv6 literals.
        if bytes.first() == Some(&b'[') || bytes.windows(2).any(|w| w == b"@[") {
            if let Some(end) = bytes.iter().position(|&b| b == b']') {
                if bytes.get(end + 1) == Some(&b':') {
                    let (userhost, path) = (&bytes[..end + 1], &bytes[end + 2..]);
                    return Self::remote(userhost, path, true);
                }
            }
        }
        if !remote {
            if bytes.is_empty() {
                return Err("empty path".into());
            }
            return Ok(Endpoint::Local(PathBuf::from(OsString::from_vec(
                bytes.to_vec(),
            ))));
        }
        let c = colon.unwrap();
        Self::remote(&bytes[..c], &bytes[c + 1..], false)
    }

    fn remote(userhost: &[u8], path: &[u8], bracketed: bool) -> Result<Endpoint, String> {
        let userhost = std::str::from_utf8(userhost)
            .map_err(|_| "host name is not valid UTF-8".to_string())?;
        let (user, host) = match userhost.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, userhost),
        };
        let host = if bracketed {
            host.trim_start_matches('[').trim_end_matches(']')
        } else {
            host
        };
        if host.is_empty() {
            return Err(format!("no host name in {userhost:?}"));
        }
        if host.starts_with('-') {
            return Err(format!("host name {host:?} may not start with '-'"));
        }
        Ok(Endpoint::Remote {
            user,
            host: host.to_string(),
            path: path.to_vec(),
        })
    }

    pub fn label(&self) -> String {
        match self {
            Endpoint::Local(p) => p.display().to_string(),
            Endpoint::Remote { user, host, path } => format!(
                "{}{host}:{}",
                user.as_ref().map(|u| format!("{u}@")).unwrap_or_default(),
                String::from_utf8_lossy(path)
            ),
        }
    }
}

/// A single file copied under another name (or the same): its sync root
/// holds it as `from` on the sending side and as `to` on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    pub from: PathBuf,
    pub to: PathBuf,
    /// DEST was spelled as a name (no `/`): should `to` be a directory
    /// there, the file goes into it instead, as rsync reads DEST.
    pub or_into: bool,
}

/// rsync's trailing-slash rule: a source path names "the contents of" its
/// directory when it ends in `/`, its last component is `.` or `..`, or (a
/// remote `host:`) it is empty; otherwise it names the entry itself, which
/// lands inside DEST under its own name.
pub fn means_contents(path: &[u8]) -> bool {
    path.is_empty() || path.ends_with(b"/") || matches!(last_component(path), b"." | b"..")
}

/// The last component of `path` (trailing slashes ignored).
pub fn last_component(path: &[u8]) -> &[u8] {
    let trimmed = trim_slashes(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// `path` without trailing slashes (`/` stays `/`).
pub fn trim_slashes(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

/// `a` joined with relative `b` as remote path bytes.
pub fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    if b.is_empty() {
        return a.to_vec();
    }
    if a.is_empty() {
        return b.to_vec();
    }
    let mut v = a.to_vec();
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(b);
    v
}

pub fn os(b: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Endpoint {
        Endpoint::parse(&OsString::from(s)).unwrap()
    }

    #[test]
    fn trailing_slash_means_contents() {
        for c in ["data/", ".", "./", "data/.", "..", "", "/"] {
            assert!(means_contents(c.as_bytes()), "{c:?}");
        }
        for e in ["data", "./data", "/p/results", "~", "a/b"] {
            assert!(!means_contents(e.as_bytes()), "{e:?}");
        }
        assert_eq!(last_component(b"/p/results"), b"results");
        assert_eq!(last_component(b"results"), b"results");
        assert_eq!(trim_slashes(b"/x//"), b"/x");
        assert_eq!(trim_slashes(b"/"), b"/");
    }

    #[test]
    fn parses_like_rsync() {
        assert_eq!(p("./data"), Endpoint::Local("./data".into()));
        assert_eq!(p("./a:b"), Endpoint::Local("./a:b".into()));
        assert_eq!(
            p("rorqual:/project/x"),
            Endpoint::Remote {
                user: None,
                host: "rorqual".into(),
                path: b"/project/x".to_vec()
            }
        );
        assert_eq!(
            p("me@robot:rel"),
            Endpoint::Remote {
                user: Some("me".into()),
                host: "robot".into(),
                path: b"rel".to_vec()
            }
        );
        assert_eq!(
            p("[::1]:/x"),
            Endpoint::Remote {
                user: None,
                host: "::1".into(),
                path: b"/x".to_vec()
            }
        );
        assert!(Endpoint::parse(&OsString::from("-oProxyCommand=x:/y")).is_err());
    }
}
