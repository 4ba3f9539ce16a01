//! A deliberately hostile SFTP v3 server on stdin/stdout, for pull tests.
//!
//! Std only, so tests can build it with a bare `rustc` call
//! ([`robosync_testbed::hostile_sftp_server`]). It serves a fake tree under any
//! path ending in `hostile-root` whose listings carry the names of the scp
//! CVE-2019-6111 class (`../escape`, absolute paths, `a/b`, NUL, empty,
//! duplicates, a symlink out of the tree then a "directory" of the same name),
//! files that are shorter than announced or whose READs return more than asked,
//! a file that changes while it is read (its FSTAT disagrees with the listing);
//! under `absurd-root` a READDIR announces u32::MAX names.

use std::collections::HashMap;
use std::io::{Read, Write};

const FXP_INIT: u8 = 1;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_READLINK: u8 = 19;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const MTIME: u32 = 1_600_000_000;

#[derive(Clone, Copy)]
struct Entry {
    name: &'static [u8],
    mode: u32,
    size: u64,
}

const fn file(name: &'static [u8], size: u64) -> Entry {
    Entry {
        name,
        mode: S_IFREG | 0o644,
        size,
    }
}

const fn dir(name: &'static [u8]) -> Entry {
    Entry {
        name,
        mode: S_IFDIR | 0o755,
        size: 0,
    }
}

const ROOT: &[Entry] = &[
    file(b"good.txt", 11),
    file(b"../escape", 5),
    file(b"/tmp/robosync-hostile-abs", 5),
    file(b"a/b", 5),
    file(b"", 5),
    file(b"x\0y", 5),
    file(b"dup", 5),
    file(b"dup", 5),
    Entry {
        name: b"link",
        mode: S_IFLNK | 0o777,
        size: 14,
    },
    dir(b"link"),
    file(b"link/inside", 5),
    dir(b"sub"),
    file(b"greedy", 100),
    file(b"short", 1 << 20),
    file(b"moving", 5),
];

const SUB: &[Entry] = &[file(b"deep.txt", 5), file(b"../../../escape2", 5)];

struct Out<'a>(&'a mut dyn Write);

impl Out<'_> {
    fn send(&mut self, body: Vec<u8>) {
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        self.0.write_all(&p).unwrap();
        self.0.flush().unwrap();
    }
}

fn s(v: &mut Vec<u8>, b: &[u8]) {
    v.extend((b.len() as u32).to_be_bytes());
    v.extend(b);
}

fn attrs(v: &mut Vec<u8>, e: &Entry) {
    v.extend(0x0du32.to_be_bytes()); // size, permissions, times
    v.extend(e.size.to_be_bytes());
    v.extend(e.mode.to_be_bytes());
    v.extend(MTIME.to_be_bytes());
    v.extend(MTIME.to_be_bytes());
}

fn head(kind: u8, id: u32) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(id.to_be_bytes());
    v
}

fn status(id: u32, code: u32) -> Vec<u8> {
    let mut v = head(101, id);
    v.extend(code.to_be_bytes());
    s(&mut v, b"hostile");
    s(&mut v, b"");
    v
}

/// The path relative to the fake root, or `None` outside it.
fn rel(path: &[u8]) -> Option<(bool, Vec<u8>)> {
    for (root, absurd) in [(&b"hostile-root"[..], false), (b"absurd-root", true)] {
        if let Some(i) = path.windows(root.len()).position(|w| w == root) {
            let rest = &path[i + root.len()..];
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            return Some((absurd, rest.to_vec()));
        }
    }
    None
}

fn lookup(rel: &[u8]) -> Option<Entry> {
    if rel.is_empty() {
        return Some(dir(b""));
    }
    if let Some(name) = rel.strip_prefix(b"sub/") {
        return SUB.iter().find(|e| e.name == name).copied();
    }
    ROOT.iter().find(|e| e.name == rel).copied()
}

fn content(rel: &[u8], off: u64, len: u32) -> Option<Vec<u8>> {
    let data: &[u8] = match rel {
        b"good.txt" => b"hello world",
        b"sub/deep.txt" => b"deep\n",
        // More than asked: a broken or hostile server.
        b"greedy" => return Some(vec![b'g'; len as usize + 4096]),
        // Announced 1 MiB, ends at once.
        b"short" => b"",
        _ => b"evil\n",
    };
    let off = off.min(data.len() as u64) as usize;
    let end = (off + len as usize).min(data.len());
    (off < end).then(|| data[off..end].to_vec())
}

fn main() {
    let mut input = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut out = Out(&mut stdout);
    let mut listed: HashMap<Vec<u8>, bool> = HashMap::new();
    loop {
        let mut len = [0u8; 4];
        if input.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if input.read_exact(&mut body).is_err() {
            return;
        }
        let kind = body[0];
        if kind == FXP_INIT {
            let mut v = vec![2u8];
            v.extend(3u32.to_be_bytes());
            out.send(v);
            continue;
        }
        let id = u32::from_be_bytes(body[1..5].try_into().unwrap());
        let mut at = 5;
        let mut field = || {
            let n = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
            let f = body[at + 4..at + 4 + n].to_vec();
            at += 4 + n;
            f
        };
        let first = field();
        let reply = match kind {
            FXP_OPENDIR | FXP_OPEN => match rel(&first) {
                Some(_) => {
                    let mut v = head(102, id);
                    s(&mut v, &first);
                    listed.insert(first, false);
                    v
                }
                None => status(id, 2),
            },
            FXP_CLOSE => status(id, 0),
            FXP_READDIR => match (rel(&first), listed.insert(first.clone(), true)) {
                (_, Some(true)) | (None, _) => status(id, 1),
                (Some((true, _)), _) => {
                    let mut v = head(104, id);
                    v.extend(u32::MAX.to_be_bytes());
                    v
                }
                (Some((false, r)), _) => {
                    let entries = match &r[..] {
                        b"" => ROOT,
                        b"sub" | b"link" => SUB,
                        _ => &[],
                    };
                    let mut v = head(104, id);
                    v.extend((entries.len() as u32).to_be_bytes());
                    for e in entries {
                        s(&mut v, e.name);
                        s(&mut v, e.name);
                        attrs(&mut v, e);
                    }
                    v
                }
            },
            FXP_READ => {
                // The READ fields follow the handle: u64 offset, u32 length.
                let off = u64::from_be_bytes(body[at..at + 8].try_into().unwrap());
                let len = u32::from_be_bytes(body[at + 8..at + 12].try_into().unwrap());
                match rel(&first).and_then(|(_, r)| content(&r, off, len)) {
                    Some(d) => {
                        let mut v = head(103, id);
                        s(&mut v, &d);
                        v
                    }
                    None => status(id, 1),
                }
            }
            // Rewritten on the server between the listing and the read.
            FXP_FSTAT if rel(&first).is_some_and(|(_, r)| r == b"moving") => {
                let mut v = head(105, id);
                v.extend(0x0du32.to_be_bytes());
                v.extend(5u64.to_be_bytes());
                v.extend((S_IFREG | 0o644).to_be_bytes());
                v.extend((MTIME + 60).to_be_bytes());
                v.extend((MTIME + 60).to_be_bytes());
                v
            }
            FXP_LSTAT | FXP_STAT | FXP_FSTAT => match rel(&first).and_then(|(_, r)| lookup(&r)) {
                Some(e) => {
                    let mut v = head(105, id);
                    attrs(&mut v, &e);
                    v
                }
                None => status(id, 2),
            },
            FXP_READLINK => {
                let mut v = head(104, id);
                v.extend(1u32.to_be_bytes());
                s(&mut v, b"../../sentinel");
                s(&mut v, b"");
                v.extend(0u32.to_be_bytes());
                v
            }
            FXP_REALPATH => {
                let mut v = head(104, id);
                v.extend(1u32.to_be_bytes());
                s(&mut v, &first);
                s(&mut v, b"");
                v.extend(0u32.to_be_bytes());
                v
            }
            _ => status(id, 8),
        };
        out.send(reply);
    }
}
