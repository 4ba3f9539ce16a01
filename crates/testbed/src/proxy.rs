//! A fault-injecting, byte-counting TCP proxy on loopback.
//!
//! Counts what really crosses the wire (tests compare it against file sizes),
//! cuts connections on demand or once a byte budget is spent, and can delay
//! and rate-limit traffic to emulate a distant robot node.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Network emulation for both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shaping {
    /// Added one-way delay (half the round trip).
    pub one_way_delay: Duration,
    /// Bytes per second per direction and connection; 0 = unlimited.
    pub rate: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client → server bytes.
    pub up: u64,
    /// Server → client bytes.
    pub down: u64,
    pub connections: u64,
    pub cuts: u64,
}

struct Shared {
    up: AtomicU64,
    down: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    /// Cut every connection once `up` passes this value (u64::MAX = never).
    cut_at_up: AtomicU64,
    /// Cut every connection once `down` passes this value (u64::MAX = never).
    cut_at_down: AtomicU64,
    /// While set, nothing is forwarded (connections stay open): a frozen link.
    frozen: AtomicBool,
    refuse: AtomicBool,
    live: Mutex<Vec<TcpStream>>,
    shaping: Shaping,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` (new) → 127.0.0.1:`target`.
    pub fn start(target: u16) -> Proxy {
        Self::with_shaping(target, Shaping::default())
    }

    pub fn with_shaping(target: u16, shaping: Shaping) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            cut_at_up: AtomicU64::new(u64::MAX),
            cut_at_down: AtomicU64::new(u64::MAX),
            frozen: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            shaping,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if sh.refuse.load(Ordering::Relaxed) {
                            drop(client);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        sh.connections.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut live = sh.live.lock().unwrap();
                            live.push(client.try_clone().unwrap());
                            live.push(server.try_clone().unwrap());
                        }
                        pump(
                            sh.clone(),
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            true,
                        );
                        pump(sh.clone(), server, client, false);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { port, shared, stop }
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            up: self.shared.up.load(Ordering::Relaxed),
            down: self.shared.down.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
            cuts: self.shared.cuts.load(Ordering::Relaxed),
        }
    }

    /// Cuts every open connection now (both directions, like a dropped link).
    pub fn cut_all(&self) {
        cut(&self.shared);
    }

    /// Cuts the oldest open connection only (both of its sockets).
    pub fn cut_one(&self) {
        let mut live = self.shared.live.lock().unwrap();
        if live.len() >= 2 {
            self.shared.cuts.fetch_add(1, Ordering::Relaxed);
            for s in live.drain(..2) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Cuts every open connection once total client→server bytes exceed `total_up`.
    pub fn cut_when_up_exceeds(&self, total_up: u64) {
        self.shared.cut_at_up.store(total_up, Ordering::Relaxed);
    }

    /// Cuts every open connection once total server→client bytes exceed `total_down`.
    pub fn cut_when_down_exceeds(&self, total_down: u64) {
        self.shared.cut_at_down.store(total_down, Ordering::Relaxed);
    }

    /// Freezes (or thaws) every connection: bytes are held, not forwarded,
    /// and nothing is closed, like a link that stalls without a reset.
    pub fn freeze(&self, yes: bool) {
        self.shared.frozen.store(yes, Ordering::Relaxed);
    }

    /// While set, new connections are accepted and closed at once.
    pub fn refuse_new(&self, yes: bool) {
        self.shared.refuse.store(yes, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        cut(&self.shared);
    }
}

fn cut(shared: &Shared) {
    let mut live = shared.live.lock().unwrap();
    if !live.is_empty() {
        shared.cuts.fetch_add(1, Ordering::Relaxed);
    }
    for s in live.drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Copies `from` → `to` on its own threads, counting, shaping and cutting.
fn pump(shared: Arc<Shared>, mut from: TcpStream, mut to: TcpStream, up: bool) {
    let shaping = shared.shaping;
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let sh = shared.clone();
    let frozen = shared.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let counter = if up { &sh.up } else { &sh.down };
            let total = counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            let limit = if up { &sh.cut_at_up } else { &sh.cut_at_down };
            if total > limit.load(Ordering::Relaxed) {
                limit.store(u64::MAX, Ordering::Relaxed);
                cut(&sh);
                break;
            }
            if tx
                .send((Instant::now() + shaping.one_way_delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    thread::spawn(move || {
        let start = Instant::now();
        let mut sent: u64 = 0;
        for (due, chunk) in rx {
            while frozen.frozen.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(10));
            }
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if shaping.rate > 0 {
                sent += chunk.len() as u64;
                let should = Duration::from_secs_f64(sent as f64 / shaping.rate as f64);
                let elapsed = start.elapsed();
                if should > elapsed {
                    thread::sleep(should - elapsed);
                }
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
