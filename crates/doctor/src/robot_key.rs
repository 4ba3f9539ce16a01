//! `robosync robot-key`: a dedicated key for a robot (automation) node and
//! everything to register and use it.
//!
//! Creates an ed25519 key with `ssh-keygen` (never over an existing one),
//! prints the authorized_keys/CCDB line `restrict,from="…",command="…" KEY`,
//! the `~/.ssh/config` stanza and the `robosync doctor` command to run once
//! the key is registered. The `from=` pattern is checked as the Alliance's
//! automation-node page requires: IP addresses only, at least the first
//! three octets fixed (`x.y.z.*`), public (no 10/8, 172.16/12, 192.168/16).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Alliance's transfer-only wrapper (scp, sftp, rsync).
pub const ALLIANCE_TRANSFER_WRAPPER: &str =
    "/cvmfs/soft.computecanada.ca/custom/bin/computecanada/allowed_commands/transfer_commands.sh";

/// What `robosync robot-key` makes: the binary parses them (see its
/// `--help`) and passes them here.
#[derive(Debug, Clone)]
pub struct RobotKeyOptions {
    /// Addresses the key may be used from (the from= pattern list).
    pub from: Option<String>,
    /// The key file to create (None: ~/.ssh/robosync_robot_ed25519).
    pub key: Option<PathBuf>,
    /// Print the lines for an existing key instead of refusing.
    pub reuse: bool,
    /// The forced command (the site's transfer wrapper).
    pub command: String,
    /// The Host alias for ~/.ssh/config.
    pub host: String,
    /// The robot node's host name.
    pub hostname: Option<String>,
    /// Port of the robot node's sshd, if not 22.
    pub port: Option<u16>,
    /// The account name on the cluster (None: $USER).
    pub user: Option<String>,
    /// Accept private and loopback addresses in the pattern.
    pub any_address: bool,
}

/// Makes the key (unless it exists and `reuse`) and prints on stdout the
/// line to register, the config stanza and the doctor command; the error
/// says what to change.
pub fn run(args: &RobotKeyOptions) -> Result<(), String> {
    let Some(from) = &args.from else {
        return Err(match suggested_pattern() {
            Some(p) => format!(
                "name the addresses the key may be used from with --from; this machine's address suggests --from '{p}' \
                 (check it: `curl ifconfig.me` shows the public address the node will see)"
            ),
            None => "name the addresses the key may be used from with --from (e.g. --from '216.18.209.*'); \
                     `curl ifconfig.me` shows this machine's public address"
                .into(),
        });
    };
    let families = check_pattern(from, args.any_address)?;
    if args.command.contains('"') || args.command.contains('\n') || args.command.is_empty() {
        return Err(format!(
            "--command {:?} cannot go inside command=\"…\" (no quotes or newlines)",
            args.command
        ));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let key = match (&args.key, &home) {
        (Some(k), _) => k.clone(),
        (None, Some(h)) => h.join(".ssh/robosync_robot_ed25519"),
        (None, None) => return Err("HOME is not set: name the key file with --key".into()),
    };
    let public = with_suffix(&key, ".pub");
    let exists = key.exists() || public.exists();
    if exists && !args.reuse {
        return Err(format!(
            "{} already exists: robosync never overwrites a key (use --reuse to print the lines for it, or --key for a new file)",
            if key.exists() { &key } else { &public }.display()
        ));
    }
    if !exists {
        create_key(&key, &args.host)?;
        println!(
            "Created {} (ed25519, no passphrase, for unattended runs: keep it private, mode 600).\n",
            key.display()
        );
    }
    let pubkey = std::fs::read_to_string(&public)
        .map_err(|e| format!("cannot read {}: {e}", public.display()))?;
    let pubkey = pubkey.trim();

    println!("1. Register this line for your account (CCDB: My Account → SSH Keys; elsewhere: ~/.ssh/authorized_keys on the node):\n");
    println!(
        "restrict,from=\"{from}\",command=\"{}\" {pubkey}\n",
        args.command
    );
    let user = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "YOUR-ACCOUNT".into());
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| "robot.rorqual.alliancecan.ca".into());
    println!("2. Add this to ~/.ssh/config:\n");
    println!("Host {}", args.host);
    println!("  HostName {hostname}");
    if let Some(p) = args.port {
        println!("  Port {p}");
    }
    println!("  User {user}");
    println!("  IdentityFile {}", key.display());
    println!("  IdentitiesOnly yes");
    println!("  RequestTTY no");
    if families.v4 && !families.v6 {
        // The pattern holds IPv4 addresses only: an IPv6 connection would be refused.
        println!("  AddressFamily inet");
    } else if families.v6 && !families.v4 {
        println!("  AddressFamily inet6");
    }
    println!();
    if args.hostname.is_none() {
        println!(
            "   (HostName: your cluster's robot node — Fir robot.fir.alliancecan.ca, Narval robot.narval.alliancecan.ca,\n    Rorqual robot.rorqual.alliancecan.ca, Trillium robot2.scinet.utoronto.ca)\n"
        );
    }
    println!("3. Once the key is active (registration can take a while), check everything:\n");
    println!("robosync doctor {}:~", args.host);
    if families.v6 {
        println!(
            "\nIPv6: the pattern lists IPv6 addresses; the node sees whichever family your client uses, so list\n\
             both families, or pin one with AddressFamily (as above) or robosync -4/-6."
        );
    }
    Ok(())
}

/// Which address families a pattern list allows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Families {
    /// IPv4 addresses match.
    pub v4: bool,
    /// IPv6 addresses match.
    pub v6: bool,
}

/// Checks a from= pattern list as the Alliance requires: addresses only,
/// at least three IPv4 octets fixed (or a /24 or longer), public unless
/// `any_address`; IPv6 as an address or a prefix of /48 or longer, global.
pub fn check_pattern(list: &str, any_address: bool) -> Result<Families, String> {
    let mut fam = Families::default();
    if list.trim().is_empty() {
        return Err("the from= pattern is empty".into());
    }
    for entry in list.split(',') {
        let e = entry.trim();
        if e.is_empty() {
            return Err(format!("{list:?} has an empty entry"));
        }
        if e.starts_with('!') {
            return Err(format!(
                "{e:?}: negated entries are not needed; list only the addresses allowed"
            ));
        }
        if e.contains(':') {
            check_v6(e, any_address)?;
            fam.v6 = true;
        } else {
            check_v4(e, any_address)?;
            fam.v4 = true;
        }
    }
    Ok(fam)
}

fn check_v4(e: &str, any_address: bool) -> Result<(), String> {
    let (addr, len) = match e.split_once('/') {
        Some((a, l)) => (
            a,
            Some(
                l.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| format!("{e:?}: {l:?} is not a prefix length"))?,
            ),
        ),
        None => (e, None),
    };
    let parts: Vec<&str> = addr.split('.').collect();
    if parts.len() != 4 {
        if parts.iter().all(|p| p.parse::<u8>().is_ok() || *p == "*") {
            return Err(format!(
                "{e:?} is not a whole address pattern: write four parts, e.g. 216.18.209.*"
            ));
        }
        return Err(format!(
            "{e:?} is not an IP address pattern: the key must name addresses, not host names"
        ));
    }
    let mut octets = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        if *p == "*" && i == 3 && len.is_none() {
            continue;
        }
        if p.contains('*') || p.contains('?') {
            return Err(format!(
                "{e:?} leaves too much open: the first three parts must be fixed (x.y.z.* is accepted, x.y.*.* is not)"
            ));
        }
        octets[i] = p.parse().map_err(|_| {
            format!("{e:?}: {p:?} is not a number from 0 to 255 (host names are not accepted)")
        })?;
    }
    if len.is_some_and(|l| l < 24) {
        return Err(format!(
            "{e:?} leaves too much open: use a /24 or longer (the first three parts fixed)"
        ));
    }
    let ip = Ipv4Addr::from(octets);
    if !any_address && !is_public_v4(ip) {
        return Err(format!(
            "{e:?} is not a public address (private, loopback or reserved): the node sees your public address, \
             which `curl ifconfig.me` shows (--any-address if your site accepts private ones)"
        ));
    }
    Ok(())
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a >= 224
        || a == 0
        || (a == 100 && (64..128).contains(&b)))
}

fn check_v6(e: &str, any_address: bool) -> Result<(), String> {
    let (addr, len) = match e.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .ok()
                .filter(|l| *l <= 128)
                .ok_or_else(|| format!("{e:?}: {l:?} is not a prefix length"))?,
        ),
        None => (e, 128),
    };
    if addr.contains('*') {
        return Err(format!(
            "{e:?}: write an IPv6 network as a prefix, e.g. 2620:123:7002:4::/64"
        ));
    }
    let ip: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("{e:?} is not an IPv6 address or prefix"))?;
    if len < 48 {
        return Err(format!(
            "{e:?} leaves too much open: use a /48 or longer (your network, e.g. a /64)"
        ));
    }
    // Global unicast is 2000::/3.
    if !any_address && (ip.segments()[0] & 0xe000) != 0x2000 {
        return Err(format!(
            "{e:?} is not a public IPv6 address (global ones start with 2 or 3)"
        ));
    }
    Ok(())
}

/// `x.y.z.*` from the address this machine would leave by, when it is public.
fn suggested_pattern() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet leaves: connecting a UDP socket only picks the route.
    s.connect("8.8.8.8:53").ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if is_public_v4(ip) => {
            let [a, b, c, _] = ip.octets();
            Some(format!("{a}.{b}.{c}.*"))
        }
        _ => None,
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn create_key(key: &Path, host: &str) -> Result<(), String> {
    if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    let comment = format!(
        "robosync robot key for {host} ({})",
        robosync_transport::connect::unix_to_utc(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        )
        .split(' ')
        .next()
        .unwrap_or_default()
    );
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f"])
        .arg(key)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen ({e}): install OpenSSH's client"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alliance_patterns() {
        let v4 = Families {
            v4: true,
            v6: false,
        };
        assert_eq!(check_pattern("216.18.209.*", false), Ok(v4));
        assert!(check_pattern("216.18.209.0/24", false).is_ok());
        assert!(check_pattern("216.18.209.5,199.241.166.*", false).is_ok());
        for bad in [
            "216.18.*.*",
            "216.18.209",
            "216.18.0.0/16",
            "10.1.2.*",
            "192.168.1.*",
            "172.20.1.*",
            "127.0.0.1",
            "host.example.org",
            "*",
            "",
            "2620:123::/32",
            "fd00::1",
            "!216.18.209.1",
        ] {
            assert!(check_pattern(bad, false).is_err(), "{bad} accepted");
        }
        assert_eq!(
            check_pattern("2620:123:7002:4::/64", false),
            Ok(Families {
                v4: false,
                v6: true
            })
        );
        assert!(check_pattern("127.0.0.1", true).is_ok());
    }
}
