//! Transport errors: the SFTP crate's typed [`Error`] (its carrier variants
//! are what connecting produces), plus how a russh error is classified.

pub use robosync_sftp::error::{Error, Status};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_link_is_not_a_refusal() {
        assert!(russh_lost(&russh::Error::Disconnect));
        assert!(russh_lost(&russh::Error::SendError));
        assert!(!russh_lost(&russh::Error::ChannelOpenFailure(
            russh::ChannelOpenFailure::AdministrativelyProhibited
        )));
    }
}
