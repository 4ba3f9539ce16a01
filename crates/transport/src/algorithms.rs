//! The user's algorithm policy (`KexAlgorithms`, `Ciphers`, `MACs`,
//! `HostKeyAlgorithms`, `PubkeyAcceptedAlgorithms`, `CASignatureAlgorithms`,
//! as resolved by [`crate::ssh_config`] with OpenSSH's defaults and `+ - ^`
//! modifiers) turned into what russh offers. The policy is a limit, never a
//! hint: a list that leaves nothing robosync implements is refused, naming
//! the directive and what robosync could offer, rather than widened.

use russh::keys::ssh_key::{Algorithm, HashAlg};
use russh::{cipher, kex, mac, AlgorithmKind, Preferred};

use crate::error::Error;
use crate::ssh_config::{HostConfig, DEFAULT_CIPHERS};

/// Plain key algorithms russh can verify and sign with (no FIDO `sk-` keys,
/// no DSA), in OpenSSH's order; each also has its `-cert-v01@openssh.com` form.
const KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

fn kex_offered() -> Vec<&'static str> {
    kex::ALL_KEX_ALGORITHMS
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| *n != "none")
        .collect()
}

fn ciphers_offered() -> Vec<&'static str> {
    cipher::ALL_CIPHERS
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| !matches!(*n, "none" | "clear"))
        .collect()
}

fn macs_offered() -> Vec<&'static str> {
    mac::ALL_MAC_ALGORITHMS
        .iter()
        .map(|n| n.as_ref())
        .filter(|n| *n != "none")
        .collect()
}

fn keys_offered() -> Vec<String> {
    let certs = KEY_ALGORITHMS.iter().map(|k| format!("{k}{CERT_SUFFIX}"));
    certs
        .chain(KEY_ALGORITHMS.iter().map(|k| k.to_string()))
        .collect()
}

/// The names of `wanted` that robosync implements, in the user's order; an
/// error naming `directive` when none is left.
fn allowed<'a>(
    directive: &str,
    wanted: &'a [String],
    offered: &[impl AsRef<str>],
) -> Result<Vec<&'a str>, Error> {
    let kept: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|w| offered.iter().any(|o| o.as_ref() == *w))
        .collect();
    if kept.is_empty() {
        return Err(Error::Connect(format!(
            "{directive} {} allows nothing robosync implements; robosync offers: {} \
             (change {directive} in your ssh config or -o, or use --ssh-program ssh)",
            wanted.join(","),
            offered
                .iter()
                .map(|o| o.as_ref())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    Ok(kept)
}

/// What russh offers for this host: the user's lists restricted to what
/// robosync implements, plus the ext-info and strict-kex markers.
///
/// `host_certificates`: whether to ask for host certificates (only worth it
/// when a known_hosts file trusts a host CA, as OpenSSH does).
pub(crate) fn preferred(cfg: &HostConfig, host_certificates: bool) -> Result<Preferred, Error> {
    let mut kex: Vec<kex::Name> = allowed("KexAlgorithms", &cfg.kex_algorithms, &kex_offered())?
        .into_iter()
        .filter_map(|n| kex::ALL_KEX_ALGORITHMS.iter().find(|k| k.as_ref() == n))
        .map(|k| **k)
        .collect();
    kex.push(kex::EXTENSION_SUPPORT_AS_CLIENT);
    kex.push(kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT);

    let mut ciphers: Vec<cipher::Name> = allowed("Ciphers", &cfg.ciphers, &ciphers_offered())?
        .into_iter()
        .filter_map(|n| cipher::ALL_CIPHERS.iter().find(|c| c.as_ref() == n))
        .map(|c| **c)
        .collect();
    if is_default_ciphers(&cfg.ciphers) {
        // Nobody chose an order: robosync's is the fastest on this CPU.
        let fast = fast_cipher_order();
        ciphers.sort_by_key(|c| fast.iter().position(|f| f == c).unwrap_or(usize::MAX));
    }

    let macs: Vec<mac::Name> = allowed("MACs", &cfg.macs, &macs_offered())?
        .into_iter()
        .filter_map(|n| mac::ALL_MAC_ALGORITHMS.iter().find(|m| m.as_ref() == n))
        .map(|m| **m)
        .collect();

    let names = allowed(
        "HostKeyAlgorithms",
        &cfg.host_key_algorithms,
        &keys_offered(),
    )?;
    let key: Vec<Algorithm> = names
        .iter()
        .filter(|n| !n.ends_with(CERT_SUFFIX))
        .filter_map(|n| Algorithm::new(n).ok())
        .collect();
    let certs: Vec<Algorithm> = names
        .iter()
        .filter_map(|n| n.strip_suffix(CERT_SUFFIX))
        .filter_map(|n| Algorithm::new(n).ok())
        .collect();
    if key.is_empty() && !host_certificates {
        return Err(Error::Connect(format!(
            "HostKeyAlgorithms {} allows only host certificates, and no known_hosts file trusts a \
             host CA (@cert-authority); add a plain key type such as ssh-ed25519",
            cfg.host_key_algorithms.join(",")
        )));
    }
    Ok(Preferred {
        kex: kex.into(),
        key: key.into(),
        host_key_certificates: if host_certificates {
            certs.into()
        } else {
            Vec::new().into()
        },
        cipher: ciphers.into(),
        mac: macs.into(),
        ..Preferred::default()
    })
}

fn is_default_ciphers(list: &[String]) -> bool {
    let default: Vec<&str> = DEFAULT_CIPHERS.split(',').collect();
    list.len() == default.len() && list.iter().all(|c| default.contains(&c.as_str()))
}

/// AES-GCM first where the CPU accelerates it, else ChaCha20.
fn fast_cipher_order() -> Vec<cipher::Name> {
    let aes_fast = {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    };
    if aes_fast {
        vec![
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_CTR,
            cipher::AES_256_CTR,
        ]
    } else {
        vec![
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::AES_128_CTR,
            cipher::AES_256_CTR,
        ]
    }
}

/// The directive that governs an algorithm kind, for messages.
fn directive(kind: &AlgorithmKind) -> &'static str {
    match kind {
        AlgorithmKind::Kex => "KexAlgorithms",
        AlgorithmKind::Key => "HostKeyAlgorithms",
        AlgorithmKind::Cipher => "Ciphers",
        AlgorithmKind::Mac => "MACs",
        AlgorithmKind::Compression => "Compression",
    }
}

/// The one-line explanation of a key exchange that found nothing in common
/// with the server, or `None` for any other failure.
pub(crate) fn no_common_algorithm(peer: &str, e: &russh::Error) -> Option<String> {
    let russh::Error::NoCommonAlgo { kind, ours, theirs } = e else {
        return None;
    };
    let hidden = |n: &&String| !n.starts_with("ext-info-") && !n.starts_with("kex-strict-");
    let list = |v: &[String]| {
        v.iter()
            .filter(hidden)
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    };
    let d = directive(kind);
    Some(format!(
        "{peer} accepts nothing your {d} allows: robosync offered {}, the server offers {} \
         (align {d} in your ssh config or -o with the server's list)",
        list(ours),
        list(theirs)
    ))
}

/// Whether `PubkeyAcceptedAlgorithms` lets a key of this type be offered
/// (`certificate`: as a certificate). RSA keys pass with any RSA signature.
pub(crate) fn accepts_key(cfg: &HostConfig, alg: &Algorithm, certificate: bool) -> bool {
    let names: Vec<String> = if alg.clone().is_rsa() {
        ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        vec![alg.as_str().to_string()]
    };
    names.iter().any(|n| {
        let n = if certificate {
            format!("{n}{CERT_SUFFIX}")
        } else {
            n.clone()
        };
        cfg.pubkey_accepted_algorithms.contains(&n)
    })
}

/// The RSA signature hash to use: the server's best when the policy accepts
/// it, else the policy's first RSA signature.
pub(crate) fn rsa_hash(cfg: &HostConfig, server_best: Option<HashAlg>) -> Option<HashAlg> {
    let name = |h: Option<HashAlg>| match h {
        Some(HashAlg::Sha512) => "rsa-sha2-512",
        Some(HashAlg::Sha256) => "rsa-sha2-256",
        _ => "ssh-rsa",
    };
    let accepted = |h: Option<HashAlg>| {
        let n = name(h);
        cfg.pubkey_accepted_algorithms
            .iter()
            .any(|a| a == n || a.strip_suffix(CERT_SUFFIX) == Some(n))
    };
    if accepted(server_best) {
        return server_best;
    }
    [Some(HashAlg::Sha512), Some(HashAlg::Sha256), None]
        .into_iter()
        .find(|h| accepted(*h))
        .unwrap_or(server_best)
}

/// Whether `CASignatureAlgorithms` allows the CA's signature algorithm.
pub(crate) fn ca_signature_allowed(cfg: &HostConfig, signature: &Algorithm) -> bool {
    cfg.ca_signature_algorithms.is_empty()
        || cfg
            .ca_signature_algorithms
            .iter()
            .any(|a| a == signature.as_str())
}
