//! The request engine against the in-memory server: ordering, backpressure,
//! many handles, raw names, timeouts, a dead carrier, a hostile server.
//! Each test is bounded: a hang fails it rather than the suite.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::proto::{FXF_CREAT, FXF_EXCL, FXF_READ, FXF_TRUNC, FXF_WRITE};

/// The bound on every test: far beyond what any of them needs.
const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("test exceeded its bound")
}

async fn session(fs: MemFs, opts: ServerOptions) -> (MemServer, Arc<Sftp>) {
    session_with(fs, opts, SessionOptions::default()).await
}

async fn session_with(fs: MemFs, opts: ServerOptions, s: SessionOptions) -> (MemServer, Arc<Sftp>) {
    let (server, sftp) = MemServer::connect(fs, opts, s).await.expect("handshake");
    (server, Arc::new(sftp))
}

fn hostile(h: Hostile) -> ServerOptions {
    ServerOptions {
        hostile: Some(h),
        ..ServerOptions::default()
    }
}

const NEW: u32 = FXF_WRITE | FXF_CREAT | FXF_EXCL;

/// Waits until the server has seen `n` requests (bounded).
async fn until_seen(server: &MemServer, n: usize) {
    bounded(async {
        while server.requests() < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_file_lands_by_temp_and_rename_as_on_a_real_server() {
    let fs = MemFs::new();
    let (_server, s) = session(fs.clone(), ServerOptions::default()).await;
    assert!(s.extensions.posix_rename && s.extensions.copy_data && s.extensions.lsetstat);
    assert_eq!(s.limits.max_write, 255 * 1024);
    bounded(async {
        s.mkdir(b"/d", &Attrs::default()).await.unwrap();
        let h = s.open(b"/d/.x.part", NEW, &Attrs::default()).await.unwrap();
        let attrs = Attrs {
            permissions: Some(0o640),
            times: Some((5, 1_600_000_000)),
            ..Attrs::default()
        };
        let seen = s
            .write_stat_close(&h, 0, b"hello", Some(&attrs))
            .await
            .unwrap();
        assert_eq!(seen.size, Some(5));
        let landed = s.rename_and_lstat(b"/d/.x.part", b"/d/x").await.unwrap();
        assert!(landed.is_file() && landed.size == Some(5));
        s.symlink(b"x", b"/d/link").await.unwrap();
        assert_eq!(s.readlink(b"/d/link").await.unwrap(), b"x");
        assert!(s.lstat(b"/d/link").await.unwrap().is_symlink());
        assert!(s.stat(b"/d/link").await.unwrap().is_file());
        let mut names: Vec<_> = s
            .list_dir(b"/d")
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.filename)
            .collect();
        names.sort();
        assert_eq!(names, vec![b"link".to_vec(), b"x".to_vec()]);
        // A second EXCL open of a name that exists is a typed refusal.
        let again = s.open(b"/d/x", NEW, &Attrs::default()).await.unwrap_err();
        assert!(matches!(again, Error::Failure(_)), "{again}");
        let gone = s.stat(b"/d/nothing").await.unwrap_err();
        assert!(matches!(gone, Error::NoSuchFile(_)), "{gone}");
        assert!(!gone.is_transient());
    })
    .await;
    assert_eq!(fs.get(b"/d/x"), Some(Node::File(b"hello".to_vec())));
    assert_eq!(fs.meta(b"/d/x"), Some((0o640, 1_600_000_000)));
}

#[tokio::test]
async fn the_extensions_robosync_uses_answer() {
    let fs = MemFs::new();
    fs.add_file(b"/home/robot/old", b"0123456789");
    fs.add_symlink(b"/home/robot/l", b"old");
    let opts = ServerOptions {
        home: b"/home/robot".to_vec(),
        ..ServerOptions::default()
    };
    let (_server, s) = session(fs.clone(), opts).await;
    bounded(async {
        assert_eq!(s.expand_path(b"~").await.unwrap(), b"/home/robot");
        assert_eq!(s.expand_path(b"~/x").await.unwrap(), b"/home/robot/x");
        assert_eq!(s.realpath(b"old").await.unwrap(), b"/home/robot/old");
        let from = s.open(b"old", FXF_READ, &Attrs::default()).await.unwrap();
        let to = s.open(b"new", NEW, &Attrs::default()).await.unwrap();
        s.copy_data(&from, 2, 5, &to, 0).await.unwrap();
        s.fsync(&to).await.unwrap();
        s.close(&to).await.unwrap();
        s.close(&from).await.unwrap();
        let t = Attrs {
            times: Some((1, 42)),
            ..Attrs::default()
        };
        s.lsetstat(b"l", &t).await.unwrap();
    })
    .await;
    assert_eq!(
        fs.get(b"/home/robot/new"),
        Some(Node::File(b"23456".to_vec()))
    );
    assert_eq!(fs.meta(b"/home/robot/l").unwrap().1, 42);
    assert_ne!(
        fs.meta(b"/home/robot/old").unwrap().1,
        42,
        "lsetstat followed the link"
    );
}

#[tokio::test]
async fn without_extensions_the_session_falls_back_or_says_unsupported() {
    let fs = MemFs::new();
    fs.add_file(b"/a", b"new");
    fs.add_file(b"/b", b"old");
    let opts = ServerOptions {
        extensions: false,
        ..ServerOptions::default()
    };
    let (_server, s) = session(fs.clone(), opts).await;
    bounded(async {
        // Plain RENAME cannot replace: the engine removes the old one first.
        s.rename(b"/a", b"/b").await.unwrap();
        let e = s.lsetstat(b"/b", &Attrs::default()).await.unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
    })
    .await;
    assert_eq!(fs.get(b"/b"), Some(Node::File(b"new".to_vec())));
}

#[tokio::test]
async fn replies_out_of_order_reach_the_requests_they_answer() {
    let fs = MemFs::new();
    for i in 0..200u32 {
        fs.add_file(format!("/f{i}").as_bytes(), &vec![b'x'; i as usize]);
    }
    let opts = ServerOptions {
        reorder: true,
        ..ServerOptions::default()
    };
    let (server, s) = session(fs, opts).await;
    let asks: Vec<_> = (0..200u32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.stat(format!("/f{i}").as_bytes()).await) })
        })
        .collect();
    for a in bounded(futures::future::join_all(asks)).await {
        let (i, got) = a.unwrap();
        assert_eq!(got.unwrap().size, Some(i as u64));
    }
    // Some replies really did go out in reverse (requests arrived together).
    assert!(server.max_group() > 1, "max group {}", server.max_group());
}

#[tokio::test]
async fn many_requests_are_in_flight_at_once() {
    let fs = MemFs::new();
    fs.add_file(b"/f", &[7u8; 4096]);
    let (server, s) = session(fs, ServerOptions::default()).await;
    let h = Arc::new(s.open(b"/f", FXF_READ, &Attrs::default()).await.unwrap());
    let base = server.requests();
    server.hold();
    let reads: Vec<_> = (0..64u64)
        .map(|i| {
            let (s, h) = (s.clone(), h.clone());
            tokio::spawn(async move { s.read(&h, i * 64, 64).await })
        })
        .collect();
    // All 64 reach the server before any is answered.
    until_seen(&server, base + 64).await;
    server.release();
    for r in bounded(futures::future::join_all(reads)).await {
        assert_eq!(r.unwrap().unwrap().unwrap(), vec![7u8; 64]);
    }
}

#[tokio::test]
async fn the_byte_budget_holds_back_what_does_not_fit() {
    let fs = MemFs::new();
    let opts = SessionOptions {
        budget_bytes: 128 * 1024,
        ..SessionOptions::default()
    };
    let (server, s) = session_with(fs.clone(), ServerOptions::default(), opts).await;
    let h = Arc::new(s.open(b"/f", NEW, &Attrs::default()).await.unwrap());
    let base = server.requests();
    server.hold();
    let writes: Vec<_> = (0..32u64)
        .map(|i| {
            let (s, h) = (s.clone(), h.clone());
            let data = Bytes::from(vec![i as u8; 32 * 1024]);
            tokio::spawn(async move { s.write(&h, i * 32 * 1024, data).await })
        })
        .collect();
    // 128 KiB of budget: four 32 KiB writes in flight, the rest wait.
    until_seen(&server, base + 4).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.requests() - base, 4);
    server.release();
    for w in bounded(futures::future::join_all(writes)).await {
        w.unwrap().unwrap();
    }
    s.close(&h).await.unwrap();
    let Some(Node::File(data)) = fs.get(b"/f") else {
        panic!("no file")
    };
    assert_eq!(data.len(), 32 * 32 * 1024);
    assert!((0..32).all(|i| data[i * 32 * 1024..(i + 1) * 32 * 1024]
        .iter()
        .all(|b| *b == i as u8)));
}

#[tokio::test]
async fn three_hundred_handles_stay_open_and_apart() {
    let fs = MemFs::new();
    let opts = ServerOptions {
        max_handles: 300,
        ..ServerOptions::default()
    };
    let (server, s) = session(fs.clone(), opts).await;
    let opens: Vec<_> = (0..300u32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let name = format!("/f{i}");
                let h = s.open(name.as_bytes(), NEW, &Attrs::default()).await?;
                Ok::<_, Error>((i, h))
            })
        })
        .collect();
    let mut handles = Vec::new();
    for o in bounded(futures::future::join_all(opens)).await {
        handles.push(o.unwrap().unwrap());
    }
    assert_eq!(server.open_handles(), 300);
    // Handles are raw bytes, not text (these are not UTF-8).
    assert!(handles.iter().any(|(_, h)| std::str::from_utf8(h).is_err()));
    let one_more = s.open(b"/over", NEW, &Attrs::default()).await.unwrap_err();
    assert!(matches!(one_more, Error::Failure(_)), "{one_more}");
    let writes: Vec<_> = handles
        .into_iter()
        .map(|(i, h)| {
            let s = s.clone();
            tokio::spawn(async move {
                s.write_and_close(&h, 0, format!("{i}").as_bytes(), None)
                    .await
            })
        })
        .collect();
    for w in bounded(futures::future::join_all(writes)).await {
        w.unwrap().unwrap();
    }
    assert_eq!(server.open_handles(), 0);
    assert_eq!(fs.get(b"/f299"), Some(Node::File(b"299".to_vec())));
}

#[tokio::test]
async fn names_that_are_not_utf8_travel_unchanged() {
    let fs = MemFs::new();
    let (_server, s) = session(fs.clone(), ServerOptions::default()).await;
    let dir: &[u8] = b"/caf\xe9";
    let file: &[u8] = b"/caf\xe9/\xff\xfe name.bin";
    bounded(async {
        s.mkdir(dir, &Attrs::default()).await.unwrap();
        let h = s.open(file, NEW, &Attrs::default()).await.unwrap();
        s.write_and_close(&h, 0, b"data", None).await.unwrap();
        let names = s.list_dir(dir).await.unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].filename, b"\xff\xfe name.bin");
        let e = s.stat(b"/caf\xe9/missing\x80").await.unwrap_err();
        assert!(matches!(e, Error::NoSuchFile(_)));
    })
    .await;
    assert_eq!(fs.get(file), Some(Node::File(b"data".to_vec())));
}

#[tokio::test]
async fn a_big_directory_is_read_whole() {
    let fs = MemFs::new();
    for i in 0..1000 {
        fs.add_file(format!("/d/{i:04}").as_bytes(), b"");
    }
    let (_server, s) = session(fs, ServerOptions::default()).await;
    let names = bounded(s.list_dir(b"/d")).await.unwrap();
    assert_eq!(names.len(), 1000);
}

#[tokio::test]
async fn a_silent_server_times_out_and_ends_the_session() {
    let opts = SessionOptions {
        request_timeout: Duration::from_millis(200),
        ..SessionOptions::default()
    };
    let (_server, s) = session_with(MemFs::new(), hostile(Hostile::Silent), opts).await;
    let e = bounded(s.stat(b"/")).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.is_transient());
    assert!(s.link_failed() && s.is_dead());
    let after = bounded(s.stat(b"/")).await.unwrap_err();
    assert!(matches!(after, Error::ConnectionLost { .. }), "{after}");
}

#[tokio::test]
async fn a_dead_carrier_fails_everything_in_flight() {
    let fs = MemFs::new();
    let (server, s) = session(fs, hostile(Hostile::DropCarrier)).await;
    server.hold();
    let asks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.stat(b"/").await })
        })
        .collect();
    server.release();
    for a in bounded(futures::future::join_all(asks)).await {
        let e = a.unwrap().unwrap_err();
        assert!(matches!(e, Error::ConnectionLost { .. }), "{e}");
        assert!(e.is_transient());
    }
    bounded(s.ended()).await;
    assert!(s.is_dead());
}

#[tokio::test]
async fn a_broken_reply_stream_ends_the_session_without_a_panic() {
    // A stream cut short is a lost link; a reply that cannot be SFTP is
    // the server breaking the protocol (exit 12, not retried as an outage).
    for (h, protocol) in [
        (Hostile::Truncated, false),
        (Hostile::Garbage, true),
        (Hostile::Oversized, true),
    ] {
        let (_server, s) = session(MemFs::new(), hostile(h)).await;
        let e = bounded(s.stat(b"/")).await.unwrap_err();
        match protocol {
            true => assert!(matches!(e, Error::Protocol { .. }), "{h:?}: {e}"),
            false => assert!(matches!(e, Error::ConnectionLost { .. }), "{h:?}: {e}"),
        }
        assert!(s.is_dead(), "{h:?}");
    }
}

#[tokio::test]
async fn replies_to_ids_nobody_asked_for_are_ignored() {
    let opts = SessionOptions {
        request_timeout: Duration::from_millis(200),
        ..SessionOptions::default()
    };
    let (_server, s) = session_with(MemFs::new(), hostile(Hostile::WrongIds), opts).await;
    let e = bounded(s.stat(b"/")).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn a_read_longer_than_asked_is_refused() {
    let fs = MemFs::new();
    fs.add_file(b"/f", b"0123456789");
    let (_server, s) = session(fs, hostile(Hostile::LyingSizes)).await;
    let h = bounded(s.open(b"/f", FXF_READ, &Attrs::default()))
        .await
        .unwrap();
    // The size is a lie the client cannot see through; the data is not.
    assert_eq!(s.fstat(&h).await.unwrap().size, Some(10 + (1 << 30)));
    let e = bounded(s.read(&h, 0, 4)).await.unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn names_that_leave_the_directory_are_seen_for_what_they_are() {
    let fs = MemFs::new();
    fs.add_file(b"/d/ok", b"");
    let (_server, s) = session(fs, hostile(Hostile::TraversalNames)).await;
    let names = bounded(s.list_dir(b"/d")).await.unwrap();
    let (safe, unsafe_): (Vec<_>, Vec<_>) = names
        .into_iter()
        .map(|n| n.filename)
        .partition(|n| crate::safe_name(n));
    assert_eq!(safe, vec![b"ok".to_vec()]);
    assert_eq!(unsafe_.len(), 5, "{unsafe_:?}"); // `..` is dropped by the listing itself
}

/// With time paused, a request left unanswered times out at once.
#[tokio::test(start_paused = true)]
async fn a_whole_session_against_each_hostile_mode_returns() {
    for h in [
        Hostile::LyingSizes,
        Hostile::TraversalNames,
        Hostile::Truncated,
        Hostile::Garbage,
        Hostile::Oversized,
        Hostile::Silent,
        Hostile::DropCarrier,
        Hostile::WrongIds,
    ] {
        for honest in [0, 1, 3, 8] {
            let fs = MemFs::new();
            fs.add_file(b"/file", b"some bytes");
            fs.add_symlink(b"/link", b"file");
            let opts = ServerOptions {
                hostile: Some(h),
                honest,
                ..ServerOptions::default()
            };
            let (_server, stream) = MemServer::start(fs, opts);
            bounded(crate::fuzzing::drive_session(stream)).await;
        }
    }
}

#[tokio::test]
async fn a_truncating_open_empties_the_file() {
    let fs = MemFs::new();
    fs.add_file(b"/f", b"long old content");
    let (_server, s) = session(fs.clone(), ServerOptions::default()).await;
    let h = bounded(s.open(b"/f", FXF_WRITE | FXF_TRUNC, &Attrs::default()))
        .await
        .unwrap();
    s.write_and_close(&h, 0, b"new", None).await.unwrap();
    assert_eq!(fs.get(b"/f"), Some(Node::File(b"new".to_vec())));
}

#[tokio::test]
async fn mkdir_p_makes_what_is_missing_and_refuses_a_file_in_the_way() {
    let fs = MemFs::new();
    fs.add_dir(b"/a");
    fs.add_file(b"/a/file", b"x");
    let (_server, s) = session(fs.clone(), ServerOptions::default()).await;
    bounded(async {
        s.mkdir_p(b"/a/b/c/d").await.unwrap();
        s.mkdir_p(b"/a/b/c/d").await.unwrap();
        let e = s.mkdir_p(b"/a/file/sub").await.unwrap_err();
        assert!(matches!(e, Error::Failure(_)), "{e}");
    })
    .await;
    assert_eq!(fs.get(b"/a/b/c/d"), Some(Node::Dir));
}

#[tokio::test]
async fn read_range_reads_across_many_requests_and_stops_at_the_end() {
    let fs = MemFs::new();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    fs.add_file(b"/big", &data);
    let opts = ServerOptions {
        max_read: 4096,
        ..ServerOptions::default()
    };
    let (_server, s) = session(fs, opts).await;
    assert_eq!(s.limits.max_read, 4096);
    let got = bounded(s.read_range(b"/big", 12_345, 500_000))
        .await
        .unwrap();
    assert_eq!(got, &data[12_345..512_345]);
    let tail = bounded(s.read_range(b"/big", 999_000, 5_000))
        .await
        .unwrap();
    assert_eq!(tail, &data[999_000..]);
}
