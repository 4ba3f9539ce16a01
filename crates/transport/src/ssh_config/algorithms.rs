//! OpenSSH's algorithm lists and `kex_assemble_names` (`+`, `-`, `^`,
//! wildcards) for the native resolver.

use super::*;

pub(crate) const DEFAULT_CIPHERS: &str = "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com";
pub(super) const ALL_CIPHERS: &str = "3des-cbc,aes128-cbc,aes192-cbc,aes256-cbc,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com";
pub(super) const DEFAULT_MACS: &str = "umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1";
pub(super) const ALL_MACS: &str = "hmac-sha1,hmac-sha1-96,hmac-sha2-256,hmac-sha2-512,hmac-md5,hmac-md5-96,umac-64@openssh.com,umac-128@openssh.com,hmac-sha1-etm@openssh.com,hmac-sha1-96-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-md5-etm@openssh.com,hmac-md5-96-etm@openssh.com,umac-64-etm@openssh.com,umac-128-etm@openssh.com";
pub(super) const DEFAULT_KEX: &str = "sntrup761x25519-sha512,sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256";
pub(super) const ALL_KEX: &str = "diffie-hellman-group1-sha1,diffie-hellman-group14-sha1,diffie-hellman-group14-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha1,diffie-hellman-group-exchange-sha256,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,curve25519-sha256,curve25519-sha256@libssh.org,sntrup761x25519-sha512,sntrup761x25519-sha512@openssh.com";
pub(super) const DEFAULT_KEY_ALGS: &str = "ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256-cert-v01@openssh.com,ecdsa-sha2-nistp384-cert-v01@openssh.com,ecdsa-sha2-nistp521-cert-v01@openssh.com,sk-ssh-ed25519-cert-v01@openssh.com,sk-ecdsa-sha2-nistp256-cert-v01@openssh.com,rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com,ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,sk-ssh-ed25519@openssh.com,sk-ecdsa-sha2-nistp256@openssh.com,rsa-sha2-512,rsa-sha2-256";
pub(super) const ALL_KEY_ALGS: &str = "ssh-ed25519,ssh-ed25519-cert-v01@openssh.com,sk-ssh-ed25519@openssh.com,sk-ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256,ecdsa-sha2-nistp256-cert-v01@openssh.com,ecdsa-sha2-nistp384,ecdsa-sha2-nistp384-cert-v01@openssh.com,ecdsa-sha2-nistp521,ecdsa-sha2-nistp521-cert-v01@openssh.com,sk-ecdsa-sha2-nistp256@openssh.com,sk-ecdsa-sha2-nistp256-cert-v01@openssh.com,webauthn-sk-ecdsa-sha2-nistp256@openssh.com,ssh-dss,ssh-dss-cert-v01@openssh.com,ssh-rsa,ssh-rsa-cert-v01@openssh.com,rsa-sha2-256,rsa-sha2-256-cert-v01@openssh.com,rsa-sha2-512,rsa-sha2-512-cert-v01@openssh.com";

pub(super) const DEFAULT_CA_SIG_ALGS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,sk-ssh-ed25519@openssh.com,sk-ecdsa-sha2-nistp256@openssh.com,rsa-sha2-512,rsa-sha2-256";
/// Signature algorithms (no certificate types): what `CASignatureAlgorithms` may name.
pub(super) const ALL_SIG_ALGS: &str = "ssh-ed25519,sk-ssh-ed25519@openssh.com,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,sk-ecdsa-sha2-nistp256@openssh.com,webauthn-sk-ecdsa-sha2-nistp256@openssh.com,ssh-dss,ssh-rsa,rsa-sha2-256,rsa-sha2-512";
/// Appends the names of `b` that `a` lacks (OpenSSH `kex_names_cat`).
pub(super) fn names_cat(a: &mut Vec<String>, b: impl IntoIterator<Item = String>) {
    for name in b {
        if !a.contains(&name) {
            a.push(name);
        }
    }
}

/// OpenSSH `kex_assemble_names`: the effective algorithm list for a configured
/// value with `+`, `-` or `^`, or an explicit pattern list.
pub(super) fn assemble_algorithms(
    value: Option<&str>,
    def: &str,
    all: &str,
) -> Result<String, String> {
    let Some(list) = value.filter(|v| !v.is_empty()) else {
        return Ok(def.to_string());
    };
    let def_names = def.split(',').map(str::to_string);
    let combined: Vec<String> = if let Some(rest) = list.strip_prefix('+') {
        let mut v: Vec<String> = def_names.collect();
        names_cat(&mut v, rest.split(',').map(str::to_string));
        v
    } else if let Some(rest) = list.strip_prefix('-') {
        let kept: Vec<&str> = def
            .split(',')
            .filter(|name| match_pattern_list(name, rest, false) != 1)
            .collect();
        return Ok(kept.join(","));
    } else if let Some(rest) = list.strip_prefix('^') {
        let mut v: Vec<String> = rest.split(',').map(str::to_string).collect();
        names_cat(&mut v, def_names);
        v
    } else {
        list.split(',').map(str::to_string).collect()
    };
    let mut out: Vec<String> = Vec::new();
    for pattern in &combined {
        if pattern.starts_with('!') {
            return Err(format!(
                "negated algorithm pattern {pattern:?} is not allowed here"
            ));
        }
        names_cat(
            &mut out,
            all.split(',')
                .filter(|name| wildcard_match(name, pattern))
                .map(str::to_string),
        );
    }
    if out.is_empty() {
        return Err(format!("no supported algorithm in {list:?}"));
    }
    Ok(out.join(","))
}
