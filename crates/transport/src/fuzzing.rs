//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the
//! corpus-replay tests that run on stable Rust. Each takes arbitrary bytes
//! the way the product takes them from a server or a file, and must return,
//! quickly and without panicking, whatever they are. The SFTP ones live in
//! robosync-sftp and are re-exported here.

use std::sync::OnceLock;

use russh::keys::ssh_key::{Certificate, PublicKey};

#[cfg(feature = "fuzzing")]
pub use robosync_sftp::fuzzing::sftp_session;
pub use robosync_sftp::fuzzing::{drive_session, sftp_reply, sftp_stream};

/// Text as the only ssh_config file, resolved for `ssh rorqual` by the
/// native parser (no file is read and no `Match exec` command is run).
pub fn ssh_config(data: &[u8]) {
    crate::ssh_config::fuzz::native(&String::from_utf8_lossy(data));
}

/// Bytes as the output of `ssh -G rorqual`.
pub fn ssh_g_output(data: &[u8]) {
    crate::ssh_config::fuzz::ssh_g(data);
}

/// The host key [`known_hosts`] asks about (ed25519).
pub const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz34jBZventYOL6i+SBtcaxVod+8WdBp8+qVVKTCYYE";
/// The certificate authority that signed [`HOST_CERT`].
pub const CA_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJRd3sxps/IG4sgsZB1OEpaolHgAWgXFtLcUJdga6Lqu";
/// A host certificate for [`HOST_KEY`], principals `rorqual` and
/// `robot.example`, valid 2020-01-01 to 2099-12-31.
pub const HOST_CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAILpB6RskH+jDsd2+qrOS8o2ZE+HmLH/TDqStyXLhI/VLAAAAIBz34jBZventYOL6i+SBtcaxVod+8WdBp8+qVVKTCYYEAAAAAAAAAAAAAAACAAAABXJvYm90AAAAHAAAAAdyb3JxdWFsAAAADXJvYm90LmV4YW1wbGUAAAAAXgvhAAAAAAD0hQWAAAAAAAAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACCUXd7MabPyBuLILGQdThKWqJR4AFoFxbS3FCXYGui6rgAAAFMAAAALc3NoLWVkMjU1MTkAAABAu/JimTLa7dkU47PSoEOIqKDkIh/EsYYWPKeJf5dAGqZZRdyQixgfs3vOrOwE/VYvFby6FewKFMFwJxBKavbDBQ==";

/// Bytes as a known_hosts file, asked about [`HOST_KEY`] and [`HOST_CERT`].
pub fn known_hosts(data: &[u8]) {
    static FIXED: OnceLock<Option<(PublicKey, Certificate)>> = OnceLock::new();
    let fixed = FIXED.get_or_init(|| {
        Some((
            PublicKey::from_openssh(HOST_KEY).ok()?,
            Certificate::from_openssh(HOST_CERT).ok()?,
        ))
    });
    if let Some((key, cert)) = fixed {
        crate::known_hosts::fuzz(data, key, cert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_key_and_certificate_parse() {
        assert!(PublicKey::from_openssh(HOST_KEY).is_ok());
        assert!(PublicKey::from_openssh(CA_KEY).is_ok());
        assert!(Certificate::from_openssh(HOST_CERT).is_ok());
    }
}
