//! `--bwlimit` measured where the bytes pass: a push and a pull through the
//! testbed's (unshaped) proxy, with the rate the proxy saw, bytes over wall
//! time of the data phase, against the limit asked for.
//!
//! ```text
//! cargo bench --bench bwlimit        # ROBOSYNC_BWLIMIT=4M (default), 32 MiB each way
//! ```
//!
//! The proxy's count includes SSH and SFTP framing (about 1%) and the
//! login; the rate is taken between the first and the last second in which
//! more than 64 KiB passed, so connecting and the final rename do not count.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use robosync_testbed::{workspace_root, Proxy, Sshd};

fn main() {
    let limit = std::env::var("ROBOSYNC_BWLIMIT").unwrap_or_else(|_| "4M".into());
    let status = Command::new("cargo")
        .args(["build", "-q", "--release", "--bin", "robosync"])
        .current_dir(workspace_root())
        .status()
        .unwrap();
    assert!(status.success());
    let exe = workspace_root().join("target/release/robosync");
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..32 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(src.join("big.bin"), &data).unwrap();
    for i in 0..64 {
        fs::write(src.join(format!("small{i}")), &data[i << 16..(i + 1) << 16]).unwrap();
    }
    let cfg = work.path().join("ssh_config");
    let kh = fs::read_to_string(&sshd.known_hosts)
        .unwrap()
        .replace(&format!("]:{} ", sshd.port), &format!("]:{} ", proxy.port));
    let known = work.path().join("known_hosts");
    fs::write(&known, kh).unwrap();
    fs::write(
        &cfg,
        sshd.config_stanza("robot")
            .replace(
                &format!("Port {}\n", sshd.port),
                &format!("Port {}\n", proxy.port),
            )
            .replace(
                &sshd.known_hosts.display().to_string(),
                &known.display().to_string(),
            ),
    )
    .unwrap();
    let dest = sshd.mkdir("dest");
    let back = work.path().join("back");
    println!("| direction | --bwlimit | bytes at proxy | data-phase rate | wall time |");
    println!("|---|---|---|---|---|");
    for (name, from, to, up) in [
        (
            "push",
            format!("{}/", src.display()),
            format!("robot:{}/", dest.display()),
            true,
        ),
        (
            "pull",
            format!("robot:{}/", dest.display()),
            format!("{}/", back.display()),
            false,
        ),
    ] {
        let wire = |p: &Proxy| if up { p.stats().up } else { p.stats().down };
        let before = wire(&proxy);
        let mut child = Command::new(&exe)
            .arg("-F")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(work.path().join(format!("state-{name}")))
            .args(["--bwlimit", &limit, "-q", &from, &to])
            .spawn()
            .unwrap();
        let started = Instant::now();
        // Bytes per 1 s tick while the run lasts.
        let mut ticks = Vec::new();
        let mut last = before;
        let code = loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = wire(&proxy);
            ticks.push(now - last);
            last = now;
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(started.elapsed() < Duration::from_secs(600), "stalled");
        };
        assert!(code.success(), "{name} failed");
        let wall = started.elapsed();
        let busy: Vec<u64> = ticks.iter().copied().filter(|&b| b > 64 << 10).collect();
        // The first and last busy seconds are partial: rate over the middle ones.
        let mid = &busy[1.min(busy.len())..busy.len().saturating_sub(1).max(1.min(busy.len()))];
        let rate = mid.iter().sum::<u64>() as f64 / mid.len().max(1) as f64;
        println!(
            "| {name} | {limit} | {} | {:.2} MiB/s over {} s | {:.1} s |",
            last - before,
            rate / (1 << 20) as f64,
            mid.len(),
            wall.as_secs_f64()
        );
    }
}
