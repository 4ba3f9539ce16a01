//! The fuzz targets' inputs, on stable Rust and in every `cargo test`: each
//! committed corpus file and crash regression (`fuzz/corpus/<target>`,
//! `fuzz/regressions/<target>`) goes through the same entry points as
//! `cargo +nightly fuzz run <target>`, then a fixed number of mutations of
//! them from a fixed-seed generator. A panic names the input and writes it
//! to `target/fuzz-failures/` for replay.
//!
//! `cargo test -p robosync --test tests fuzz -- --ignored write_fuzz_corpus`
//! regenerates the corpus from the code (real manifests, journals and stat
//! caches, a real sftp-server's replies, `ssh -G` output, ssh-keygen keys).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

type Entry = fn(&[u8]);

/// Every fuzz target (the file names in `fuzz/fuzz_targets/`).
const TARGETS: &[(&str, Entry)] = &[
    ("sftp_reply", robosync_transport::fuzzing::sftp_reply),
    ("sftp_stream", robosync_transport::fuzzing::sftp_stream),
    ("sftp_session", robosync_transport::fuzzing::sftp_session),
    ("manifest", robosync_manifest::fuzzing::manifest),
    ("journal", robosync_manifest::fuzzing::journal),
    ("stat_cache", robosync_scanner::fuzzing::stat_cache),
    ("ssh_config", robosync_transport::fuzzing::ssh_config),
    ("ssh_g", robosync_transport::fuzzing::ssh_g_output),
    ("known_hosts", robosync_transport::fuzzing::known_hosts),
];

/// Mutated inputs per target and test run.
const MUTATIONS: usize = 2000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The committed inputs of `target`: corpus, then crash regressions.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for p in paths {
            let bytes = fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out
}

/// Runs one input; on a panic, keeps the input and fails naming it.
fn run(target: &str, entry: Entry, input: &[u8], origin: &str) {
    if catch_unwind(AssertUnwindSafe(|| entry(input))).is_ok() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = fs::create_dir_all(&dir);
    let file = dir.join(format!("{target}-{}", &blake3::hash(input).to_hex()[..16]));
    let _ = fs::write(&file, input);
    panic!(
        "fuzz target {target} panicked on {origin} ({} bytes, kept in {}; replay with \
         `cargo +nightly fuzz run {target} {}`)",
        input.len(),
        file.display(),
        file.display()
    );
}

/// xorshift64*: a fixed sequence, so a failure reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four libFuzzer-style edits of `input`, sometimes spliced with
/// `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: &[&[u8]] = &[
        &[0],
        &[0xff],
        &[0x7f],
        &[0x80],
        &[0, 0, 0, 0],
        &[0xff, 0xff, 0xff, 0xff],
        &[0x7f, 0xff, 0xff, 0xff],
        &[0, 0, 0x10, 0],
        &[0xff; 8],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        b"%",
        b"${",
        b"\"",
        b"\n",
        b"*",
        b"|1|",
        b"@cert-authority ",
        b"Match final exec x\n",
    ];
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 if !v.is_empty() => {
                let from = rng.below(v.len());
                let end = (from + 1 + rng.below(32)).min(v.len());
                let chunk = v[from..end].to_vec();
                v.splice(at..at, chunk);
            }
            5 => {
                let word = INTERESTING[rng.below(INTERESTING.len())];
                let end = (at + word.len()).min(v.len());
                v.splice(at..end, word.iter().copied());
            }
            6 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(64)).min(other.len());
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    for &(target, entry) in TARGETS {
        let seeds = seeds(target);
        assert!(
            !seeds.is_empty(),
            "no corpus for fuzz target {target} in {}",
            fuzz_dir().display()
        );
        for (path, bytes) in &seeds {
            run(target, entry, bytes, &path.display().to_string());
        }
    }
}

#[test]
fn fuzz_mutations_of_the_corpus_do_not_panic() {
    for (t, &(target, entry)) in TARGETS.iter().enumerate() {
        let seeds = seeds(target);
        let mut rng = Rng(0x5eed_0000_0000_0001 + t as u64);
        for i in 0..MUTATIONS {
            let (_, base) = &seeds[rng.below(seeds.len())];
            let (_, other) = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, base, other);
            run(target, entry, &input, &format!("mutation {i}"));
        }
    }
}

// ---------------------------------------------------------------------------
// The corpus, generated from the code and the real tools.

/// Writes `fuzz/corpus/<target>/<name>`.
fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn record(size: u64, byte: u8) -> robosync_manifest::Record {
    let blocks = if size > robosync_scanner::BLOCK_SIZE {
        vec![[byte; 32]; size.div_ceil(robosync_scanner::BLOCK_SIZE) as usize]
    } else {
        Vec::new()
    };
    robosync_manifest::Record {
        size,
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o644,
        whole: [byte; 32],
        blocks,
        remote_size: size,
        remote_mtime: 1_700_000_000,
    }
}

fn corpus_manifest_and_journal() {
    use robosync_manifest::{Journal, JournalRecord, Manifest};
    let mut m = Manifest {
        block_size: robosync_scanner::BLOCK_SIZE,
        written_at_unix: 1_700_000_000,
        run_id: 7,
        ..Manifest::default()
    };
    put("manifest", "empty", &m.encode());
    m.files.insert(b"a.txt".to_vec(), record(10, 1));
    m.files.insert(b"dir/big.bin".to_vec(), record(600_000, 2));
    m.files.insert(b"dir/caf\xe9".to_vec(), record(0, 3));
    let mut odd = record(5, 4);
    odd.remote_size = 4;
    odd.remote_mtime = -1;
    m.files.insert(b"dir/sub/odd".to_vec(), odd);
    let bytes = m.encode();
    put("manifest", "four-files", &bytes);
    // The target also decodes its input as a body under a valid header.
    put("manifest", "four-files.body", &bytes[56..]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let records = [
        JournalRecord::RunStarted {
            run_id: 8,
            unix: 1_700_000_100,
        },
        JournalRecord::TransferStarted {
            path: b"dir/big.bin".to_vec(),
            temp: b"dir/.rbs-1234.part".to_vec(),
            size: 600_000,
            mtime_ns: 1_700_000_000_000_000_000,
            whole: [9; 32],
        },
        JournalRecord::BlockDone {
            path: b"dir/big.bin".to_vec(),
            temp: b"dir/.rbs-1234.part".to_vec(),
            index: 1,
            hash: [8; 32],
        },
        JournalRecord::InplaceIntent {
            path: b"a.txt".to_vec(),
            blocks: vec![0, 3, 1 << 40],
        },
        JournalRecord::FileLanded {
            path: b"a.txt".to_vec(),
            record: record(10, 5),
        },
        JournalRecord::Deleted {
            path: b"dir/caf\xe9".to_vec(),
        },
    ];
    {
        let mut j = Journal::open(&path).unwrap();
        for r in &records {
            j.append(r).unwrap();
        }
        j.checkpoint().unwrap();
    }
    let journal = fs::read(&path).unwrap();
    put("journal", "six-records", &journal);
    put("journal", "torn-tail", &journal[..journal.len() - 5]);
    // The target also frames its input itself: [n][n bytes of payload]...
    let mut framed = Vec::new();
    let mut pos = 12;
    while pos + 12 <= journal.len() {
        let len = u32::from_le_bytes(journal[pos..pos + 4].try_into().unwrap()) as usize;
        let payload = &journal[pos + 12..pos + 12 + len];
        if len < 256 {
            framed.push(len as u8);
            framed.extend_from_slice(payload);
        }
        pos += 12 + len;
    }
    put("journal", "six-records.payloads", &framed);
}

fn corpus_stat_cache() {
    use robosync_scanner::{scan, Filter, ScanOptions, StatCache};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("small"), b"hello").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("sub/big"), vec![7u8; 300_000]).unwrap();
    // Older than the racy window, so the scan remembers them.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for f in ["small", "empty", "sub/big"] {
        fs::File::options()
            .write(true)
            .open(root.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let opts = ScanOptions {
        filter: Filter::new(&[]).unwrap(),
        ignore_cache: false,
        progress: None,
    };
    let mut cache = StatCache::default();
    scan(&root, &opts, &mut cache).unwrap();
    assert_eq!(cache.len(), 3);
    let path = dir.path().join("stat-cache");
    cache.save(&path).unwrap();
    let bytes = fs::read(&path).unwrap();
    put("stat_cache", "three-files", &bytes);
    // The target also appends a valid checksum to its input.
    put(
        "stat_cache",
        "three-files.unsummed",
        &bytes[..bytes.len() - 32],
    );
    StatCache::default().save(&path).unwrap();
    put("stat_cache", "empty", &fs::read(&path).unwrap());
}

/// A real sftp-server's replies to a session's worth of requests.
fn corpus_sftp() {
    use robosync_transport::proto::{self, Attrs, Packet};
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("file"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
    let mut server = Command::new("/usr/lib/openssh/sftp-server")
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream = Vec::new();
    let mut bodies = Vec::new();
    let mut ask = |pkt: Vec<u8>| -> Vec<u8> {
        server.stdin.as_mut().unwrap().write_all(&pkt).unwrap();
        let out = server.stdout.as_mut().unwrap();
        let mut len = [0; 4];
        out.read_exact(&mut len).unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        out.read_exact(&mut body).unwrap();
        stream.extend_from_slice(&len);
        stream.extend_from_slice(&body);
        bodies.push(body.clone());
        body
    };
    let handle = |body: &[u8]| match proto::decode_reply(body).unwrap().1 {
        proto::Reply::Handle(h) => h,
        other => panic!("{other:?}"),
    };
    let p = |kind, id| Packet::new(kind, id);
    ask(Packet::init().finish());
    ask(p(proto::FXP_REALPATH, 1).bytes(b".").finish());
    let h = handle(&ask(p(proto::FXP_OPENDIR, 2).bytes(b".").finish()));
    ask(p(proto::FXP_READDIR, 3).bytes(&h).finish());
    ask(p(proto::FXP_READDIR, 4).bytes(&h).finish());
    ask(p(proto::FXP_CLOSE, 5).bytes(&h).finish());
    let h = handle(&ask(p(proto::FXP_OPEN, 6)
        .bytes(b"file")
        .u32(proto::FXF_READ)
        .attrs(&Attrs::default())
        .finish()));
    ask(p(proto::FXP_READ, 7).bytes(&h).u64(2).u32(100).finish());
    ask(p(proto::FXP_READ, 8).bytes(&h).u64(10).u32(100).finish());
    ask(p(proto::FXP_FSTAT, 9).bytes(&h).finish());
    ask(p(proto::FXP_CLOSE, 10).bytes(&h).finish());
    ask(p(proto::FXP_LSTAT, 11).bytes(b"link").finish());
    ask(p(proto::FXP_READLINK, 12).bytes(b"link").finish());
    ask(p(proto::FXP_STAT, 13).bytes(b"missing").finish());
    ask(p(proto::FXP_EXTENDED, 14)
        .bytes(b"limits@openssh.com")
        .finish());
    ask(p(proto::FXP_EXTENDED, 15)
        .bytes(b"statvfs@openssh.com")
        .bytes(b".")
        .finish());
    drop(server.stdin.take());
    server.wait().unwrap();
    put("sftp_stream", "sftp-server-session", &stream);
    corpus_sftp_session(dir.path());
    put(
        "sftp_stream",
        "forced-command-text",
        b"Command rejected by transfer_commands.sh\n",
    );
    for (i, body) in bodies.iter().enumerate() {
        put("sftp_reply", &format!("sftp-server-{i:02}"), body);
    }
    let full = Attrs {
        size: Some(1 << 40),
        uid_gid: Some((1000, 1000)),
        permissions: Some(proto::S_IFREG | 0o644),
        times: Some((1, 1_700_000_000)),
    };
    let mut with_ext = Packet::new(proto::FXP_ATTRS, 20).attrs(&full).finish();
    // ATTR_EXTENDED with one pair.
    with_ext[9] |= 0x80;
    with_ext.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'k', 0, 0, 0, 1, b'v']);
    put("sftp_reply", "attrs-extended", &with_ext[4..]);
    let status = Packet::new(proto::FXP_STATUS, 21)
        .u32(proto::FX_EOF)
        .finish();
    put("sftp_reply", "status-without-message", &status[4..]);
}

/// What a real sftp-server answers to the session the `sftp_session`
/// target drives, in `dir` (which holds `file` and `link`).
fn corpus_sftp_session(dir: &Path) {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// The server's pipes as one stream, keeping a copy of what it says.
    struct Recorded<R, W> {
        rd: R,
        wr: W,
        said: Arc<Mutex<Vec<u8>>>,
    }
    impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Recorded<R, W> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let r = Pin::new(&mut self.rd).poll_read(cx, buf);
            let got = buf.filled()[before..].to_vec();
            self.said.lock().unwrap().extend_from_slice(&got);
            r
        }
    }
    impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Recorded<R, W> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.wr).poll_write(cx, data)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.wr).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.wr).poll_shutdown(cx)
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    rt.block_on(async {
        let mut child = tokio::process::Command::new("/usr/lib/openssh/sftp-server")
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stream = Recorded {
            rd: child.stdout.take().unwrap(),
            wr: child.stdin.take().unwrap(),
            said: said.clone(),
        };
        robosync_transport::fuzzing::drive_session(stream).await;
    });
    drop(rt);
    let said = said.lock().unwrap().clone();
    assert!(said.len() > 100, "sftp-server said {} bytes", said.len());
    put("sftp_session", "sftp-server", &said);
}

const SSH_CONFIGS: &[(&str, &str)] = &[
    (
        "robot-stanza",
        "Host rorqual\n    HostName robot.rorqual.alliancecan.ca\n    User me\n    \
         IdentityFile ~/.ssh/robot_ed25519\n    IdentitiesOnly yes\n    ServerAliveInterval 15\n",
    ),
    (
        "patterns-and-match",
        "# comment\nHost !other ror* ?x\n  Port 2222\n  ProxyJump bob@jump:2200,[::1]:22\n\
         Match host robot.example user me\n  Ciphers +aes128-cbc\nMatch originalhost=rorqual !localuser nobody\n  \
         KexAlgorithms -diffie-hellman*\nMatch final all\n  UserKnownHostsFile ~/.ssh/kh_%h_%p %d/kh2\n\
         Match canonical\n  BatchMode yes\nHost *\n  ConnectTimeout 1m30s\n  StrictHostKeyChecking accept-new\n",
    ),
    (
        "tokens-and-quotes",
        "Host rorqual\n  HostName %h.example.org\n  ProxyCommand \"ssh -W\" '%h:%p' -l %r # x\n  \
         IdentityFile=\"~/.ssh/id %C\"\n  CertificateFile ${HOME}/cert\n  IdentityAgent SSH_AUTH_SOCK\n  \
         ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n  LocalForward 8080 localhost:80\n  \
         IgnoreUnknown UseKeychain\n  UseKeychain yes\n  Include conf.d/*.conf other\n  \
         HostKeyAlgorithms ^ssh-ed25519\n  PubkeyAcceptedKeyTypes ssh-ed25519,rsa-sha2-*\n",
    ),
    (
        "debian-default",
        "Include /etc/ssh/ssh_config.d/*.conf\nHost *\n    SendEnv LANG LC_*\n    \
         HashKnownHosts yes\n    GSSAPIAuthentication yes\n",
    ),
];

fn corpus_ssh_config() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in SSH_CONFIGS {
        put("ssh_config", name, text.as_bytes());
        let file = dir.path().join(name);
        fs::write(&file, text).unwrap();
        // ssh -G only prints the configuration; it connects nowhere.
        let out = Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&file)
            .arg("rorqual")
            .output()
            .unwrap();
        if out.status.success() {
            put("ssh_g", name, &out.stdout);
        }
    }
}

fn corpus_known_hosts() {
    use robosync_transport::fuzzing::{CA_KEY, HOST_KEY};
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let keygen = |args: &[&str]| {
        let ok = Command::new("ssh-keygen")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "ssh-keygen {args:?}");
    };
    keygen(&["-q", "-t", "ecdsa", "-N", "", "-C", "other", "-f", "ecdsa"]);
    keygen(&["-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", "rsa"]);
    let key = |name: &str| {
        let text = fs::read_to_string(dir.path().join(name)).unwrap();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (ecdsa, rsa) = (key("ecdsa.pub"), key("rsa.pub"));
    let plain = format!(
        "# known hosts\nrorqual,192.0.2.1 {HOST_KEY}\n[robot.example]:2222 {ecdsa}\n\
         *.example,!bad.example {rsa} comment\n@cert-authority *.example,rorqual {CA_KEY}\n\
         @revoked * {rsa}\n@unknown-marker x {HOST_KEY}\nbroken line\n"
    );
    put("known_hosts", "plain", plain.as_bytes());
    let file = dir.path().join("known_hosts");
    let hashable = format!("rorqual,192.0.2.1 {HOST_KEY}\n[robot.example]:2222 {ecdsa}\n");
    fs::write(&file, hashable).unwrap();
    keygen(&["-H", "-f", "known_hosts"]);
    put("known_hosts", "hashed", &fs::read(&file).unwrap());
    put(
        "known_hosts",
        "changed",
        format!("rorqual {ecdsa}\nrorqual {rsa}\n[robot.example]:2222 {rsa}\n").as_bytes(),
    );
}

#[test]
#[ignore = "regenerates fuzz/corpus; run by hand"]
fn write_fuzz_corpus() {
    corpus_manifest_and_journal();
    corpus_stat_cache();
    corpus_sftp();
    corpus_ssh_config();
    corpus_known_hosts();
}
