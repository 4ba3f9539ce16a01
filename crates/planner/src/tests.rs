use super::*;

fn file(size: u64, mtime: i64, blocks: &[u8]) -> Node {
    let blocks: Vec<[u8; 32]> = blocks.iter().map(|b| [*b; 32]).collect();
    Node {
        kind: Kind::File,
        size,
        mtime,
        mode: 0o644,
        whole: Some(whole_of(&blocks)),
        blocks,
    }
}

fn whole_of(blocks: &[[u8; 32]]) -> [u8; 32] {
    let mut h = [0u8; 32];
    for (i, b) in blocks.iter().enumerate() {
        h[i % 32] ^= b[0].wrapping_add(i as u8);
    }
    h
}

fn dir() -> Node {
    Node {
        kind: Kind::Dir,
        size: 0,
        mtime: 0,
        mode: 0o755,
        whole: None,
        blocks: vec![],
    }
}

fn tree(nodes: &[(&str, Node)]) -> Tree {
    Tree {
        nodes: nodes
            .iter()
            .map(|(p, n)| (PathBuf::from(p), n.clone()))
            .collect(),
        ..Tree::default()
    }
}

fn record_of(n: &Node, remote_mtime: i64) -> Record {
    Record {
        size: n.size,
        mtime_ns: n.mtime * 1_000_000_000,
        mode: n.mode,
        whole: n.whole.unwrap(),
        blocks: n.blocks.clone(),
        remote_size: n.size,
        remote_mtime,
    }
}

fn manifest(entries: &[(&str, Record)]) -> Manifest {
    let mut m = Manifest::default();
    for (p, r) in entries {
        m.files.insert(p.as_bytes().to_vec(), r.clone());
    }
    m
}

#[test]
fn new_files_and_dirs_are_created_parents_first() {
    let src = tree(&[("a", dir()), ("a/b", dir()), ("a/b/f", file(10, 5, &[1]))]);
    let p = plan(&src, &Tree::default(), None, "src", &PlanOptions::default()).unwrap();
    let kinds: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        kinds,
        vec!["cd+++++++++ a", "cd+++++++++ a/b", ">f+++++++++ a/b/f"]
    );
}

#[test]
fn unchanged_by_quick_check_is_skipped() {
    let src = tree(&[("f", file(10, 5, &[1]))]);
    let p = plan(&src, &src.clone(), None, "src", &PlanOptions::default()).unwrap();
    assert!(p.actions.is_empty());
    assert_eq!(p.unchanged, 1);
}

#[test]
fn unchanged_by_manifest_is_skipped_even_when_remote_mtime_differs_from_local() {
    let s = file(10, 5, &[1]);
    let mut d = s.clone();
    d.mtime = 5;
    let m = manifest(&[("f", record_of(&s, 5))]);
    let p = plan(
        &tree(&[("f", s)]),
        &tree(&[("f", d)]),
        Some(&m),
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn changed_blocks_only_are_sent_when_remote_matches_manifest() {
    let old = file(4, 5, &[1, 2, 3, 4]);
    let new = file(4, 6, &[1, 9, 3, 4]);
    let m = manifest(&[("f", record_of(&old, 5))]);
    let p = plan(
        &tree(&[("f", new)]),
        &tree(&[("f", old)]),
        Some(&m),
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(
        p.actions,
        vec![Action::Delta {
            path: "f".into(),
            size: 4,
            send: vec![1],
            reuse: vec![0, 2, 3]
        }]
    );
}

#[test]
fn without_delta_support_a_changed_file_is_copied_whole() {
    let old = file(4, 5, &[1, 2]);
    let new = file(4, 6, &[1, 9]);
    let m = manifest(&[("f", record_of(&old, 5))]);
    let opts = PlanOptions {
        delta: false,
        ..Default::default()
    };
    let p = plan(
        &tree(&[("f", new)]),
        &tree(&[("f", old)]),
        Some(&m),
        "src",
        &opts,
    )
    .unwrap();
    assert!(matches!(
        p.actions[0],
        Action::Copy {
            reason: Reason::Changed,
            ..
        }
    ));
}

#[test]
fn drifted_remote_is_copied_whole_with_a_warning() {
    let old = file(4, 5, &[1, 2]);
    let mut remote = old.clone();
    remote.size = 99;
    let m = manifest(&[("f", record_of(&old, 5))]);
    let p = plan(
        &tree(&[("f", old.clone())]),
        &tree(&[("f", remote)]),
        Some(&m),
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        p.actions[0],
        Action::Copy {
            reason: Reason::Drifted,
            ..
        }
    ));
    assert_eq!(p.warnings.len(), 1);
}

#[test]
fn destination_with_other_content_under_the_recorded_stat_is_copied_whole() {
    // A pull's destination is local and hashed: same size and mtime as
    // recorded, other bytes. Without hashes (a push's remote) it would pass.
    let old = file(4, 5, &[1, 2]);
    let mut local = old.clone();
    local.whole = Some([9; 32]);
    let m = manifest(&[("f", record_of(&old, 5))]);
    let p = plan(
        &tree(&[("f", old.clone())]),
        &tree(&[("f", local)]),
        Some(&m),
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        p.actions[0],
        Action::Copy {
            reason: Reason::Drifted,
            ..
        }
    ));

    let mut unhashed = old.clone();
    unhashed.whole = None;
    let p = plan(
        &tree(&[("f", old.clone())]),
        &tree(&[("f", unhashed)]),
        Some(&m),
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(p.actions.is_empty());
    assert_eq!(p.unchanged, 1);
}

#[test]
fn mode_only_change_sets_attributes() {
    let s = file(10, 5, &[1]);
    let mut d = s.clone();
    d.mode = 0o600;
    let p = plan(
        &tree(&[("f", s)]),
        &tree(&[("f", d)]),
        None,
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert_eq!(p.actions, vec![Action::SetAttrs { path: "f".into() }]);
}

#[test]
fn wrong_kind_is_deleted_then_replaced() {
    let src = tree(&[("x", file(1, 1, &[1]))]);
    let dst = tree(&[("x", dir())]);
    let p = plan(&src, &dst, None, "src", &PlanOptions::default()).unwrap();
    assert_eq!(
        p.actions[0],
        Action::Delete {
            path: "x".into(),
            dir: true
        }
    );
    assert!(matches!(
        p.actions[1],
        Action::Copy {
            reason: Reason::Replaced,
            ..
        }
    ));
}

#[test]
fn delete_removes_children_before_parents() {
    let src = tree(&[
        ("keep", file(1, 1, &[1])),
        ("k2", file(1, 1, &[1])),
        ("k3", file(1, 1, &[1])),
    ]);
    let dst = tree(&[
        ("keep", file(1, 1, &[1])),
        ("k2", file(1, 1, &[1])),
        ("k3", file(1, 1, &[1])),
        ("old", dir()),
        ("old/f", file(1, 1, &[1])),
    ]);
    let opts = PlanOptions {
        delete: true,
        ..Default::default()
    };
    let p = plan(&src, &dst, None, "src", &opts).unwrap();
    let paths: Vec<_> = p.actions.iter().map(|a| a.path().to_owned()).collect();
    assert_eq!(paths, vec![PathBuf::from("old/f"), PathBuf::from("old")]);
}

#[test]
fn delete_refuses_an_empty_source() {
    let dst = tree(&[("f", file(1, 1, &[1]))]);
    let opts = PlanOptions {
        delete: true,
        max_delete: Some(1000),
        ..Default::default()
    };
    let err = plan(&Tree::default(), &dst, None, "/mnt/data", &opts).unwrap_err();
    assert_eq!(err, PlanError::EmptySource("/mnt/data".into()));
    // Without guards (a dry run's preview) the deletion is planned.
    let open = PlanOptions {
        guards: false,
        ..opts
    };
    let p = plan(&Tree::default(), &dst, None, "/mnt/data", &open).unwrap();
    assert!(matches!(p.actions.as_slice(), [Action::Delete { .. }]));
}

#[test]
fn delete_refuses_more_than_half_by_default_and_obeys_max_delete() {
    let src = tree(&[("a", file(1, 1, &[1]))]);
    let dst = tree(&[
        ("a", file(1, 1, &[1])),
        ("b", file(1, 1, &[1])),
        ("c", file(1, 1, &[1])),
    ]);
    let opts = PlanOptions {
        delete: true,
        ..Default::default()
    };
    assert!(matches!(
        plan(&src, &dst, None, "s", &opts),
        Err(PlanError::TooManyDeletes {
            would: 2,
            total: 3,
            limit: 1
        })
    ));
    let opts = PlanOptions {
        delete: true,
        max_delete: Some(2),
        ..Default::default()
    };
    assert_eq!(plan(&src, &dst, None, "s", &opts).unwrap().actions.len(), 2);
}

#[test]
fn escape_shows_invalid_utf8_and_controls() {
    use std::ffi::OsStr;
    let p = Path::new(OsStr::from_bytes(b"a\xffb\nc"));
    assert_eq!(escape(p), "a\\xffb\\x0ac");
}

#[test]
fn path_order_is_paths_own_order() {
    use std::os::unix::ffi::OsStrExt;
    let names: &[&[u8]] = &[
        b"a", b"a-b", b"a.b", b"a0", b"a/b", b"a/b/c", b"a/b-c", b"a/b.c", b"a/bc", b"ab", b"a b",
        b"b", b"\xff", b"a/\xff", b"a\xff", b"A", b"a/-", b"a/.x", b"z/a", b"z-",
    ];
    for x in names {
        for y in names {
            let paths = Path::new(std::ffi::OsStr::from_bytes(x))
                .cmp(Path::new(std::ffi::OsStr::from_bytes(y)));
            assert_eq!(
                path_order(x, y),
                paths,
                "{:?} vs {:?}",
                escape_bytes(x),
                escape_bytes(y)
            );
        }
    }
}

#[test]
fn a_tree_built_from_unsorted_entries_keeps_the_last_duplicate() {
    let t = Tree::from_unsorted(vec![
        ("b".into(), file(1, 0, &[1])),
        ("a/b".into(), file(2, 0, &[1])),
        ("a-b".into(), file(3, 0, &[1])),
        ("b".into(), file(4, 0, &[1])),
    ]);
    let sizes: Vec<(String, u64)> = t
        .nodes
        .iter()
        .map(|(p, n)| (p.display().to_string(), n.size))
        .collect();
    assert_eq!(
        sizes,
        [("a/b".into(), 2), ("a-b".into(), 3), ("b".into(), 4)]
    );
}

fn escape_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_record_of_a_file_that_landed_with_the_wrong_size_is_not_trusted() {
    // Issue 14: a late request emptied a file after it landed; the record
    // said so (remote_size 0) and every rerun called the file unchanged.
    let s = file(10, 5, &[1]);
    let mut d = s.clone();
    d.size = 0;
    let mut r = record_of(&s, 5);
    r.remote_size = 0;
    let p = plan(
        &tree(&[("f", s)]),
        &tree(&[("f", d)]),
        Some(&manifest(&[("f", r)])),
        "src",
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(
        matches!(p.actions.as_slice(), [Action::Copy { .. }]),
        "{:?}",
        p.actions
    );
}

/// rsync: a non-empty directory where a file goes stays without --delete
/// (an error of the run); with --delete it is replaced, its entries going
/// with it (not deleted a second time); a held one stays even then.
#[test]
fn non_empty_directory_in_the_way_of_a_file() {
    let source = tree(&[("f", file(1, 1, &[1]))]);
    let mut dest = tree(&[("f", dir()), ("f/z", file(1, 1, &[2]))]);
    let keep = plan(&source, &dest, None, "src", &PlanOptions::default()).unwrap();
    assert!(keep.actions.is_empty(), "{:?}", keep.actions);
    assert_eq!(keep.refused.len(), 1, "{:?}", keep.refused);
    let delete = PlanOptions {
        delete: true,
        max_delete: Some(10),
        ..Default::default()
    };
    let p = plan(&source, &dest, None, "src", &delete).unwrap();
    let deletes: Vec<_> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Delete { .. }))
        .map(|a| a.path().to_path_buf())
        .collect();
    assert_eq!(deletes, [PathBuf::from("f")]);
    assert!(p.refused.is_empty());
    dest.nodes.remove(Path::new("f/z"));
    dest.held.insert("f".into());
    let held = plan(&source, &dest, None, "src", &delete).unwrap();
    assert!(held.actions.is_empty(), "{:?}", held.actions);
    assert_eq!(held.refused.len(), 1);
}
