//! Transport errors: what failed, with whom, and what to try.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the server refused SFTP: {} (from {peer}). The forced command on the key (e.g. a site's transfer_commands.sh) did not start the SFTP server: check that the key is registered for transfers and that the site allows the sftp subsystem", said(text))]
    Refused { peer: String, text: String },
    #[error("connection to {peer} lost: {detail}")]
    ConnectionLost { peer: String, detail: String },
    #[error("no reply from {peer} within {after:?}")]
    Timeout { peer: String, after: Duration },
    #[error("SFTP protocol error with {peer}: {detail}")]
    Protocol { peer: String, detail: String },
    #[error("{op} {path:?}: {}", status_text(*code, message))]
    Status {
        op: &'static str,
        path: String,
        code: u32,
        message: String,
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
    ChannelRefused { peer: String, detail: String },
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

/// Whether a russh error means the connection itself is gone (rather than
/// a refusal made over a working one).
pub fn russh_lost(e: &russh::Error) -> bool {
    use russh::Error as R;
    matches!(
        e,
        R::Disconnect
            | R::HUP
            | R::IO(_)
            | R::SendError
            | R::RecvError
            | R::ConnectionTimeout
            | R::KeepaliveTimeout
            | R::InactivityTimeout
            | R::Elapsed(_)
    )
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
        1 => "end of file",
        2 => "no such file",
        3 => "permission denied",
        4 => "failure",
        5 => "bad message",
        8 => "operation unsupported",
        _ => "error",
    };
    if message.is_empty() || message.eq_ignore_ascii_case(name) {
        name.to_string()
    } else {
        format!("{name} ({message})")
    }
}

impl Error {
    /// True when the link itself failed, so a reconnect may help.
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::ConnectionLost { .. } | Error::Timeout { .. })
    }

    /// True when trying to connect again later may succeed: the link was
    /// lost, or nothing answered. Decided by variant, never by message.
    pub fn is_transient(&self) -> bool {
        self.is_connection() || matches!(self, Error::Unreachable(_))
    }

    /// SFTP status code, if this is a server status reply.
    pub fn status_code(&self) -> Option<u32> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Attaches a path to a status error that lacked one, keeping its operation.
    pub fn at_path(self, path: &[u8]) -> Error {
        match self {
            Error::Status { op, .. } => self.with_path(op, path),
            e => e,
        }
    }

    /// Attaches a path to a status error that lacked one.
    pub fn with_path(self, op: &'static str, path: &[u8]) -> Error {
        match self {
            Error::Status {
                code,
                message,
                path: p,
                ..
            } if p.is_empty() => Error::Status {
                op,
                path: String::from_utf8_lossy(path).into_owned(),
                code,
                message,
            },
            e => e,
        }
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
        ] {
            assert!(!e.is_transient(), "{e}");
        }
        assert!(!Error::Unreachable("x".into()).is_connection());
    }

    #[test]
    fn a_dropped_link_is_not_a_refusal() {
        assert!(russh_lost(&russh::Error::Disconnect));
        assert!(russh_lost(&russh::Error::SendError));
        assert!(!russh_lost(&russh::Error::ChannelOpenFailure(
            russh::ChannelOpenFailure::AdministrativelyProhibited
        )));
    }
}
