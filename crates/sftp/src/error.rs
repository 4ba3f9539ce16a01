//! SFTP errors: what failed, with whom, and what to try. Callers decide by
//! variant (is the file missing? is the link gone?), never by message text
//! or raw status code, so rewording a message changes nothing a caller does.

use std::fmt;
use std::time::Duration;

use crate::proto;

/// Everything that can go wrong talking SFTP to a server, and reaching it
/// (the carrier variants at the end are produced by whoever opens the
/// carrier, e.g. robosync-transport's SSH connection).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server answered SSH_FX_NO_SUCH_FILE.
    #[error("{0}")]
    NoSuchFile(Status),
    /// The server answered SSH_FX_PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(Status),
    /// The server answered SSH_FX_FAILURE (SFTP v3's catch-all: an existing
    /// name, a full disk, a non-empty directory, …).
    #[error("{0}")]
    Failure(Status),
    /// The server answered SSH_FX_OP_UNSUPPORTED, or the request needs an
    /// extension the server did not advertise.
    #[error("{0}")]
    Unsupported(Status),
    /// The server answered SSH_FX_BAD_MESSAGE: it could not parse our request.
    #[error("{0}")]
    BadMessage(Status),
    /// Any other status (EOF where data was due, codes beyond v3).
    #[error("{0}")]
    Status(Status),
    /// The server started something other than SFTP (a forced command's text).
    #[error("the server refused SFTP: {} (from {peer}). The forced command on the key (e.g. a site's transfer_commands.sh) did not start the SFTP server: check that the key is registered for transfers and that the site allows the sftp subsystem", said(text))]
    Refused {
        /// Who we talked to.
        peer: String,
        /// What it said instead of SFTP.
        text: String,
    },
    /// The carrier closed or failed under the session.
    #[error("connection to {peer} lost: {detail}")]
    ConnectionLost {
        /// Who we talked to.
        peer: String,
        /// Why it ended.
        detail: String,
    },
    /// A request went unanswered for this long (the session is then ended).
    #[error("no reply from {peer} within {after:?}")]
    Timeout {
        /// Who we talked to.
        peer: String,
        /// How long the request waited.
        after: Duration,
    },
    /// A malformed, oversized or unexpected reply (a broken or hostile server).
    #[error("SFTP protocol error with {peer}: {detail}")]
    Protocol {
        /// Who we talked to.
        peer: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// Nothing answered at the address (refused, unreachable, timed out):
    /// the host or the network may come back, so a reconnect may help.
    #[error("{0}")]
    Unreachable(String),
    /// The server declined a further channel on a live connection (its
    /// MaxSessions): asking again would only repeat that.
    #[error(
        "{peer} refused a new channel ({detail}); its MaxSessions may be lower than --channels"
    )]
    ChannelRefused {
        /// Who refused.
        peer: String,
        /// What it said.
        detail: String,
    },
    /// Could not reach the server for good (resolution, no address of the
    /// family asked for, a proxy command that cannot run): retrying will
    /// not change it.
    #[error("{0}")]
    Connect(String),
    /// The server or we said no to who the other is: authentication refused,
    /// a key or certificate unusable, a host key not accepted.
    #[error("{0}")]
    Denied(String),
}

/// A server's error answer to one request: the operation, the path it was
/// about (empty when the request named a handle), and what the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The request ("open", "write", "posix-rename@openssh.com", …).
    pub op: &'static str,
    /// The path, lossily decoded for messages; empty for handle requests.
    pub path: String,
    /// The wire status code (kept for messages and logs, not for decisions).
    pub code: u32,
    /// The server's own words.
    pub message: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?}: {}",
            self.op,
            self.path,
            status_text(self.code, &self.message)
        )
    }
}

/// What a refusing server said; OpenSSH drops a subsystem's stderr, so a
/// wrapper that refuses there (or exits without a word) leaves nothing.
fn said(text: &str) -> String {
    if text.trim().is_empty() {
        "the channel closed without a word (a wrapper's message on stderr \
         never reaches the client: OpenSSH discards a subsystem's stderr; \
         the server's logs have it)"
            .to_string()
    } else {
        format!("{text:?}")
    }
}

fn status_text(code: u32, message: &str) -> String {
    let name = match code {
        proto::FX_EOF => "end of file",
        proto::FX_NO_SUCH_FILE => "no such file",
        proto::FX_PERMISSION_DENIED => "permission denied",
        proto::FX_FAILURE => "failure",
        proto::FX_BAD_MESSAGE => "bad message",
        proto::FX_OP_UNSUPPORTED => "operation unsupported",
        _ => "error",
    };
    if message.is_empty() || message.eq_ignore_ascii_case(name) {
        name.to_string()
    } else {
        format!("{name} ({message})")
    }
}

impl Error {
    /// The error for a server's status reply `code` (not OK) to `op` on `path`.
    pub fn from_status(op: &'static str, path: &[u8], code: u32, message: String) -> Error {
        let status = Status {
            op,
            path: String::from_utf8_lossy(path).into_owned(),
            code,
            message,
        };
        match code {
            proto::FX_NO_SUCH_FILE => Error::NoSuchFile(status),
            proto::FX_PERMISSION_DENIED => Error::PermissionDenied(status),
            proto::FX_FAILURE => Error::Failure(status),
            proto::FX_BAD_MESSAGE => Error::BadMessage(status),
            proto::FX_OP_UNSUPPORTED => Error::Unsupported(status),
            _ => Error::Status(status),
        }
    }

    /// The server's answer, if this error is one (the session is then fine).
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::NoSuchFile(s)
            | Error::PermissionDenied(s)
            | Error::Failure(s)
            | Error::Unsupported(s)
            | Error::BadMessage(s)
            | Error::Status(s) => Some(s),
            _ => None,
        }
    }

    fn status_mut(&mut self) -> Option<&mut Status> {
        match self {
            Error::NoSuchFile(s)
            | Error::PermissionDenied(s)
            | Error::Failure(s)
            | Error::Unsupported(s)
            | Error::BadMessage(s)
            | Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// True when the server answered the request with an error status: the
    /// request was refused, the session carries on.
    pub fn is_status(&self) -> bool {
        self.status().is_some()
    }

    /// True when the link itself failed, so a reconnect may help.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. } | Error::Timeout { .. })
    }

    /// True when trying again later (on a new connection) may succeed: the
    /// link was lost, or nothing answered. Decided by variant, never by
    /// message.
    pub fn is_transient(&self) -> bool {
        self.is_connection() || matches!(self, Error::Unreachable(_))
    }

    /// Attaches a path to a status error that lacked one, keeping its operation.
    pub fn at_path(mut self, path: &[u8]) -> Error {
        if let Some(s) = self.status_mut() {
            if s.path.is_empty() {
                s.path = String::from_utf8_lossy(path).into_owned();
            }
        }
        self
    }

    /// Attaches an operation and a path to a status error that lacked a path.
    pub fn with_path(mut self, op: &'static str, path: &[u8]) -> Error {
        if let Some(s) = self.status_mut() {
            if s.path.is_empty() {
                s.op = op;
                s.path = String::from_utf8_lossy(path).into_owned();
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrying_is_decided_by_variant() {
        let peer = || "u@h:22".to_string();
        let lost = Error::ConnectionLost {
            peer: peer(),
            detail: "x".into(),
        };
        let timeout = Error::Timeout {
            peer: peer(),
            after: Duration::from_secs(1),
        };
        for e in [&lost, &timeout, &Error::Unreachable("x".into())] {
            assert!(e.is_transient(), "{e}");
        }
        // Worded like a transient failure, but a final one: the text does not count.
        let refused = Error::ChannelRefused {
            peer: peer(),
            detail: "timed out".into(),
        };
        for e in [
            &refused,
            &Error::Connect("cannot connect: timed out".into()),
            &Error::from_status("open", b"x", proto::FX_FAILURE, "connection lost".into()),
        ] {
            assert!(!e.is_transient(), "{e}");
        }
        assert!(!Error::Unreachable("x".into()).is_connection());
    }

    #[test]
    fn status_codes_become_variants() {
        let e = |code| Error::from_status("open", b"/a", code, String::new());
        assert!(matches!(e(proto::FX_NO_SUCH_FILE), Error::NoSuchFile(_)));
        assert!(matches!(
            e(proto::FX_PERMISSION_DENIED),
            Error::PermissionDenied(_)
        ));
        assert!(matches!(e(proto::FX_FAILURE), Error::Failure(_)));
        assert!(matches!(e(proto::FX_OP_UNSUPPORTED), Error::Unsupported(_)));
        assert!(matches!(e(proto::FX_BAD_MESSAGE), Error::BadMessage(_)));
        assert!(matches!(e(77), Error::Status(_)));
        assert_eq!(
            e(proto::FX_NO_SUCH_FILE).to_string(),
            "open \"/a\": no such file"
        );
        let e = Error::from_status("write", b"", proto::FX_FAILURE, "Failure".into())
            .with_path("open", b"/x");
        assert_eq!(e.to_string(), "open \"/x\": failure");
    }
}
