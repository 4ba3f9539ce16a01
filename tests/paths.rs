//! Paths as rsync spells them (issue 15, observation 5): a source with a
//! trailing slash (or ending in `.`/`..`) means "the contents of"; without,
//! the directory itself lands inside DEST under its own name. rsync is the
//! oracle: the same spelling, local to local, must give the same tree.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// A snapshot without robosync's state directories (at any depth: the sync
/// root of `data host:x` is x/data, so its state is x/data/.robosync).
fn tree(root: &Path) -> BTreeMap<PathBuf, Item> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !p.components().any(|c| c.as_os_str() == ".robosync"))
        .collect()
}

#[track_caller]
fn assert_trees(oracle: &Path, got: &Path, what: &str) {
    let (a, b) = (tree(oracle), tree(got));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: not the entries rsync made"
    );
    for (k, v) in &a {
        assert_eq!(
            Some(v),
            b.get(k),
            "{what}: {} differs from rsync's",
            k.display()
        );
    }
}

/// `base/data`: a small tree with a nested dir and a mode worth keeping.
fn data(base: &Path) -> PathBuf {
    let d = base.join("data");
    write(&d.join("top.txt"), b"top\n");
    write(&d.join("sub/inner.txt"), b"inner\n");
    set_mtime(&d.join("top.txt"), 1_600_000_000);
    set_mtime(&d.join("sub/inner.txt"), 1_600_000_001);
    fs::set_permissions(d.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    // The sync root's own mode (carried as rsync's `.`): the usual 0755.
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// `rsync -a SRC DEST` run in `cwd`, the oracle.
fn rsync(cwd: &Path, src: &str, dest: &Path) {
    let out = Command::new("rsync")
        .current_dir(cwd)
        .arg("-a")
        .arg(src)
        .arg(dest)
        .output()
        .expect("rsync is installed by fixtures/setup.sh");
    assert!(out.status.success(), "rsync {src}: {out:?}");
}

/// Every spelling of a push source, run from data's parent, against rsync.
#[test]
fn push_trailing_slash_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    data(&base);
    write(&base.join("data/sub/.keep"), b"");
    for (i, spelling) in ["data", "./data", "data/", "data/.", "data//"]
        .iter()
        .enumerate()
    {
        let oracle = t.path().join(format!("oracle{i}"));
        fs::create_dir_all(&oracle).unwrap();
        rsync(&base, spelling, &oracle);
        let dest = sshd.mkdir(&format!("push{i}"));
        run(robosync(&sshd, &t.path().join("state"))
            .current_dir(&base)
            .arg(spelling)
            .arg(format!("robot:{}", dest.display())))
        .success();
        assert_trees(&oracle, &dest, &format!("robosync {spelling} robot:DEST"));
    }
    // `.` and `..` from inside: the contents, as rsync.
    let inside = base.join("data/sub");
    for (i, spelling) in [".", "./", ".."].iter().enumerate() {
        let oracle = t.path().join(format!("oracle-dot{i}"));
        fs::create_dir_all(&oracle).unwrap();
        rsync(&inside, spelling, &oracle);
        let dest = sshd.mkdir(&format!("dot{i}"));
        run(robosync(&sshd, &t.path().join("state"))
            .current_dir(&inside)
            .arg(spelling)
            .arg(remote(&dest)))
        .success();
        assert_trees(&oracle, &dest, &format!("robosync {spelling} robot:DEST/"));
    }
}

/// Every spelling of a pull source, against rsync on the same directory.
#[test]
fn pull_trailing_slash_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let there = sshd.mkdir("there");
    let d = data(&there);
    for (i, tail) in ["", "/", "/.", "//"].iter().enumerate() {
        let spelling = format!("{}{tail}", d.display());
        let oracle = t.path().join(format!("oracle{i}"));
        fs::create_dir_all(&oracle).unwrap();
        rsync(t.path(), &spelling, &oracle);
        let local = t.path().join(format!("local{i}"));
        fs::create_dir_all(&local).unwrap();
        run(robosync(&sshd, &t.path().join("state"))
            .arg(format!("robot:{spelling}"))
            .arg(&local))
        .success();
        assert_trees(&oracle, &local, &format!("robosync robot:{spelling} DEST"));
    }
}

/// `data` (no slash) syncs DEST/data: a rerun, a change and `--delete` work
/// there and never touch DEST's other entries.
#[test]
fn directory_form_reruns_and_deletes_only_inside_itself() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    let d = data(&base);
    let dest = sshd.mkdir("dest");
    write(&dest.join("neighbour.txt"), b"not robosync's\n");
    let state = t.path().join("state");
    let push = |extra: &[&str]| {
        run(robosync(&sshd, &state)
            .current_dir(&base)
            .args(extra)
            .arg("data")
            .arg(remote(&dest)))
        .success()
    };
    push(&[]);
    assert!(
        dest.join("data/.robosync").is_dir(),
        "the sync root is DEST/data"
    );
    assert!(!dest.join(".robosync").exists(), "no state in DEST itself");
    let again = push(&["--json"]);
    assert_eq!(
        again.json()["files_transferred"].as_u64(),
        Some(0),
        "{}",
        again.stdout()
    );
    fs::remove_file(d.join("top.txt")).unwrap();
    write(&d.join("new.txt"), b"new\n");
    push(&["--delete"]);
    assert_trees(&d, &dest.join("data"), "after --delete");
    assert_eq!(
        fs::read(dest.join("neighbour.txt")).unwrap(),
        b"not robosync's\n"
    );

    // The pull's directory form the same way: DEST/data, then --delete inside it.
    let local = t.path().join("local");
    let pull = |extra: &[&str]| {
        run(robosync(&sshd, &state)
            .args(extra)
            .arg(format!("robot:{}", dest.join("data").display()))
            .arg(&local))
        .success()
    };
    pull(&[]);
    write(&local.join("mine.txt"), b"mine\n");
    fs::remove_file(dest.join("data/new.txt")).unwrap();
    pull(&["--delete"]);
    assert_trees(&d.join("sub"), &local.join("data/sub"), "pulled sub");
    assert!(
        !local.join("data/new.txt").exists(),
        "--delete inside DEST/data"
    );
    assert_eq!(fs::read(local.join("mine.txt")).unwrap(), b"mine\n");
}

/// A missing DEST is created (as rsync creates it); a DEST that is a file
/// is refused with a usage error for a directory source.
#[test]
fn missing_or_file_destination() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    data(&base);
    let root = sshd.mkdir("r");
    let oracle = t.path().join("oracle");
    rsync(&base, "data", &oracle);
    run(robosync(&sshd, &t.path().join("state"))
        .current_dir(&base)
        .arg("data")
        .arg(format!("robot:{}", root.join("new").display())))
    .success();
    assert_trees(&oracle, &root.join("new"), "missing DEST");

    let file = t.path().join("afile");
    write(&file, b"x");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg(format!("robot:{}", base.join("data").display()))
        .arg(&file));
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stderr().contains("not a directory"), "{}", r.stderr());
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

/// Every example of the README's usage block, run against the test sshd:
/// `rorqual:` is the test host, remote absolute paths live under a scratch
/// root, `~/x` under a unique directory of the login's home.
#[test]
fn readme_usage_examples_run() {
    let sshd = Sshd::start();
    let t = tempdir();
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("## Usage")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README has a usage block");
    let root = sshd.mkdir("readme");
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let mine = format!("robosync-readme-{}", std::process::id());
    let work = t.path().join("work");
    data(&work);
    write(&root.join("project/def-me/results/r.txt"), b"results\n");
    write(&home.join(&mine).join("results/h.txt"), b"home\n");
    let map = |arg: &str| match arg.strip_prefix("rorqual:") {
        Some(p) if p.starts_with("~/") => format!("robot:~/{mine}/{}", &p[2..]),
        Some(p) => format!("robot:{}{p}", root.display()),
        None => arg.to_string(),
    };
    let mut ran = Vec::new();
    for line in block.lines() {
        let command = line.split(" # ").next().unwrap().trim();
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"robosync"), "{line}");
        let r = run(robosync(&sshd, &t.path().join("state"))
            .current_dir(&work)
            .args(words[1..].iter().map(|w| map(w))));
        ran.push((command.to_string(), r.code(), r.stderr()));
    }
    let _ = fs::remove_dir_all(home.join(&mine));
    for (command, code, err) in &ran {
        assert_eq!(*code, 0, "{command}: {err}");
    }
    // The forms landed where the comments say.
    assert!(
        root.join("project/x/data/top.txt").is_file(),
        "data → x/data"
    );
    assert!(root.join("project/x/data/sub/inner.txt").is_file());
    assert!(root.join("project/x/top.txt").is_file(), "data/ → x");
    assert!(work.join("results/r.txt").is_file(), "results → ./results");
    assert!(
        work.join("results/h.txt").is_file(),
        "~/results → ./results"
    );
    assert!(work.join("res/r.txt").is_file(), "results/ → ./res");
    assert!(root.join("project/f/top.txt").is_file(), "a file into f/");
    assert!(root.join("project/f/t.txt").is_file(), "a file as f/t.txt");
    assert!(work.join("r.txt").is_file(), "one file pulled as ./r.txt");
    assert!(root.join("project/s/top.txt").is_file(), "several: a file");
    assert!(
        root.join("project/s/sub/inner.txt").is_file(),
        "several: a dir"
    );
    assert!(work.join("both/t.txt").is_file(), "several pulled: a file");
    assert!(
        work.join("both/results/r.txt").is_file(),
        "several pulled: a dir"
    );
    assert!(ran.len() >= 11, "{ran:?}");
}

/// `rsync -a ARGS...` run in `cwd`, the oracle for several sources.
fn rsync_all(cwd: &Path, args: &[&str]) {
    let out = Command::new("rsync")
        .current_dir(cwd)
        .arg("-a")
        .args(args)
        .output()
        .expect("rsync is installed by fixtures/setup.sh");
    assert!(out.status.success(), "rsync {args:?}: {out:?}");
}

/// `base` with a tree (`data`), another (`b`) and a file (`c.txt`).
fn three_sources(base: &Path) {
    data(base);
    write(&base.join("b/b1.txt"), b"b1\n");
    write(&base.join("b/deep/b2.txt"), b"b2\n");
    write(&base.join("c.txt"), b"c\n");
    for (f, t) in [("b/b1.txt", 1), ("b/deep/b2.txt", 2), ("c.txt", 3)] {
        set_mtime(&base.join(f), 1_600_000_000 + t);
    }
}

/// What a destination holds before a `--delete` run: strays at its top and
/// inside `data`, where rsync deletes them.
fn strays(dest: &Path) {
    write(&dest.join("stray.txt"), b"stray\n");
    write(&dest.join("data/stray2.txt"), b"stray\n");
}

/// `robosync data b/ c.txt host:x/` as rsync: into an existing DEST, a
/// missing one (made a directory), and with `--delete` (inside each
/// source's root, never what another source brought).
#[test]
fn several_sources_push_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    three_sources(&base);
    let root = sshd.mkdir("r");
    let state = t.path().join("state");
    let srcs = ["data", "b/", "c.txt"];
    for (i, (what, dest, delete)) in [
        ("existing DEST/", "x/", false),
        ("missing DEST", "new", false),
        ("--delete", "del/", true),
    ]
    .iter()
    .enumerate()
    {
        let oracle = t.path().join(format!("oracle{i}"));
        let there = root.join(dest.trim_end_matches('/'));
        if dest.ends_with('/') {
            fs::create_dir_all(&oracle).unwrap();
            fs::create_dir_all(&there).unwrap();
        }
        let slash = if dest.ends_with('/') { "/" } else { "" };
        let o = format!("{}{slash}", oracle.display());
        let both = |extra: &[&str]| {
            rsync_all(&base, &[extra, &srcs, &[o.as_str()]].concat());
            run(robosync(&sshd, &state)
                .current_dir(&base)
                .args(extra)
                .args(srcs)
                .arg(format!("robot:{}/{dest}", root.display())))
            .success();
        };
        both(&[]);
        if *delete {
            // A mirror's rerun: what the sources no longer have goes.
            strays(&oracle);
            strays(&there);
            both(&["--delete"]);
            assert!(!there.join("stray.txt").exists());
        }
        assert_trees(
            &oracle,
            &there,
            &format!("robosync {srcs:?} robot:{dest} ({what})"),
        );
    }
}

/// `robosync host:p/data host:p/b/ host:p/c.txt DEST` as rsync, with
/// `--delete` too; a missing source among them is reported (23) and the
/// others land.
#[test]
fn several_sources_pull_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let p = sshd.mkdir("p");
    three_sources(&p);
    let state = t.path().join("state");
    let srcs: Vec<String> = ["data", "b/", "c.txt"]
        .iter()
        .map(|s| format!("{}/{s}", p.display()))
        .collect();
    for (i, (what, delete)) in [("into a new DEST", false), ("--delete", true)]
        .iter()
        .enumerate()
    {
        let oracle = t.path().join(format!("oracle{i}"));
        let local = t.path().join(format!("local{i}"));
        let args: Vec<&str> = srcs.iter().map(String::as_str).collect();
        let o = oracle.display().to_string();
        let both = |extra: &[&str]| {
            rsync_all(t.path(), &[extra, &args, &[o.as_str()]].concat());
            run(robosync(&sshd, &state)
                .args(extra)
                .args(srcs.iter().map(|s| format!("robot:{s}")))
                .arg(&local))
            .success();
        };
        both(&[]);
        if *delete {
            strays(&oracle);
            strays(&local);
            both(&["--delete"]);
            assert!(!local.join("stray.txt").exists());
        }
        assert_trees(
            &oracle,
            &local,
            &format!("robosync robot:{srcs:?} DEST ({what})"),
        );
    }
    let local = t.path().join("partial");
    let r = run(robosync(&sshd, &state)
        .arg(format!("robot:{}/missing", p.display()))
        .arg(format!("robot:{}/c.txt", p.display()))
        .arg(&local));
    assert_eq!(r.code(), 23, "{}", r.stderr());
    assert!(r.stderr().contains("missing"), "{}", r.stderr());
    assert_eq!(fs::read(local.join("c.txt")).unwrap(), b"c\n");
}

/// Several sources must be all local or all from one host, and DEST a
/// directory: otherwise exit 1 naming the rule, nothing copied.
#[test]
fn several_sources_rules() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    three_sources(&base);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    let file = t.path().join("afile");
    write(&file, b"x");
    let p = |s: &str| base.join(s).display().to_string();
    for (args, says) in [
        (
            vec![p("c.txt"), format!("robot:{}", p("b")), remote(&dest)],
            "must all be local or all on one remote",
        ),
        (
            vec![
                format!("robot:{}", p("b")),
                format!("other:{}", p("c.txt")),
                p("x"),
            ],
            "must all be local or all on one remote",
        ),
        (
            vec![
                format!("robot:{}", p("b")),
                format!("robot:{}", p("c.txt")),
                file.display().to_string(),
            ],
            "not a directory",
        ),
    ] {
        let r = run(robosync(&sshd, &state).args(&args));
        // rsync: 1 for the spelling, 3 when DEST cannot be a directory.
        let code = if says == "not a directory" { 3 } else { 1 };
        assert_eq!(r.code(), code, "{args:?}: {}", r.stderr());
        assert!(r.stderr().contains(says), "{args:?}: {}", r.stderr());
    }
    assert!(fs::read_dir(&dest).unwrap().next().is_none());
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

/// A single file into a directory (`a.txt host:x/`), as rsync: only that
/// file lands; `--delete` (and `--delete-excluded`) delete nothing else; a
/// rerun sends nothing.
#[test]
fn single_file_push_into_a_directory() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    let d = data(&base);
    let odd = "b[1]*{x}.txt";
    write(&d.join(odd), b"odd\n");
    let root = sshd.mkdir("r");
    let state = t.path().join("state");
    for (i, name) in ["top.txt", odd].iter().enumerate() {
        let oracle = t.path().join(format!("oracle{i}/x"));
        fs::create_dir_all(oracle.parent().unwrap()).unwrap();
        rsync(&d, name, &PathBuf::from(format!("{}/", oracle.display())));
        let x = root.join(format!("x{i}"));
        run(robosync(&sshd, &state)
            .current_dir(&d)
            .arg(name)
            .arg(format!("robot:{}/", x.display())))
        .success();
        assert_trees(&oracle, &x, &format!("robosync {name} robot:x/"));
    }
    // From another directory, into one with other entries, with --delete.
    let x = root.join("x0");
    write(&x.join("other.txt"), b"not this run's\n");
    write(&d.join("top.txt"), b"changed\n");
    for extra in ["--delete", "--delete-excluded"] {
        let r = run(robosync(&sshd, &state)
            .args([extra, "--json"])
            .arg(d.join("top.txt"))
            .arg(remote(&x)))
        .success();
        assert_eq!(
            r.json()["deleted"].as_u64().unwrap_or(0),
            0,
            "{extra}: {}",
            r.stdout()
        );
        assert_eq!(fs::read(x.join("top.txt")).unwrap(), b"changed\n");
        assert_eq!(
            fs::read(x.join("other.txt")).unwrap(),
            b"not this run's\n",
            "{extra}"
        );
        assert!(!x.join("sub").exists(), "only the named file");
    }
    let again = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(d.join("top.txt"))
        .arg(remote(&x)))
    .success();
    assert_eq!(
        again.json()["files_transferred"].as_u64(),
        Some(0),
        "{}",
        again.stdout()
    );
}

/// Makes what a case needs before its run.
type Prepare = fn(&Path);

/// `robosync a.txt host:x/NAME`, as `rsync -a a.txt x/NAME`: NAME missing
/// or a file → the file under that name (replaced); NAME a directory → into
/// it. A rerun sends nothing.
#[test]
fn single_file_push_to_a_new_name_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let d = data(&t.path().join("base"));
    let state = t.path().join("state");
    let root = sshd.mkdir("r");
    // What x/b.txt is before the run.
    let before: [(&str, Prepare); 3] = [
        ("missing", |_| {}),
        ("a file", |b| {
            write(b, b"old, longer content\n");
            set_mtime(b, 1_500_000_000);
        }),
        ("a directory", |b| {
            write(&b.join("keep.txt"), b"keep\n");
            set_mtime(&b.join("keep.txt"), 1_500_000_000);
        }),
    ];
    for (i, (what, make)) in before.iter().enumerate() {
        let oracle = t.path().join(format!("oracle{i}/x"));
        fs::create_dir_all(&oracle).unwrap();
        make(&oracle.join("b.txt"));
        rsync(&d, "top.txt", &oracle.join("b.txt"));
        let x = root.join(format!("x{i}"));
        fs::create_dir_all(&x).unwrap();
        make(&x.join("b.txt"));
        let dest = format!("robot:{}", x.join("b.txt").display());
        run(robosync(&sshd, &state)
            .current_dir(&d)
            .arg("top.txt")
            .arg(&dest))
        .success();
        assert_trees(&oracle, &x, &format!("robosync top.txt {dest} ({what})"));
        let again = run(robosync(&sshd, &state)
            .current_dir(&d)
            .arg("--json")
            .arg("top.txt")
            .arg(&dest))
        .success();
        assert_eq!(
            again.json()["files_transferred"].as_u64(),
            Some(0),
            "{what}: {}",
            again.stdout()
        );
    }
}

/// A single file pulled, as rsync: `host:x/a.txt DIR/` and `host:x/a.txt DIR`
/// (an existing directory) land DIR/a.txt; `host:x/a.txt ./b.txt` makes or
/// replaces b.txt, or lands inside b.txt when that is a directory.
#[test]
fn single_file_pull_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let there = sshd.mkdir("there");
    write(&there.join("a.txt"), b"a\n");
    set_mtime(&there.join("a.txt"), 1_600_000_000);
    write(&there.join("other.txt"), b"not this one\n");
    let src = format!("{}", there.join("a.txt").display());
    let state = t.path().join("state");
    let cases: [(&str, &str, Prepare); 5] = [
        ("into ./", "./", |_| {}),
        ("into an existing dir", "d", |l| {
            fs::create_dir_all(l.join("d")).unwrap()
        }),
        ("to a new name", "b.txt", |_| {}),
        ("over a file", "b.txt", |l| {
            write(&l.join("b.txt"), b"old, longer\n")
        }),
        ("into a dir by name", "b.txt", |l| {
            write(&l.join("b.txt/keep"), b"k\n");
            set_mtime(&l.join("b.txt/keep"), 1_500_000_000);
        }),
    ];
    for (i, (what, dest, make)) in cases.iter().enumerate() {
        let oracle = t.path().join(format!("oracle{i}"));
        let local = t.path().join(format!("local{i}"));
        for l in [&oracle, &local] {
            fs::create_dir_all(l).unwrap();
            make(l);
        }
        rsync(&oracle, &src, Path::new(dest));
        run(robosync(&sshd, &state)
            .current_dir(&local)
            .arg(format!("robot:{src}"))
            .arg(dest))
        .success();
        assert_trees(
            &oracle,
            &local,
            &format!("robosync robot:{src} {dest} ({what})"),
        );
        let again = run(robosync(&sshd, &state)
            .current_dir(&local)
            .arg("--json")
            .arg(format!("robot:{src}"))
            .arg(dest))
        .success();
        assert_eq!(
            again.json()["files_transferred"].as_u64(),
            Some(0),
            "{what}: {}",
            again.stdout()
        );
    }
}

/// `-c` with a single file under a new name compares the remote file's
/// content (read under its own name): a same-size, same-mtime edit is fetched.
#[test]
fn single_file_pull_to_a_new_name_with_checksum() {
    let sshd = Sshd::start();
    let t = tempdir();
    let there = sshd.mkdir("there");
    let a = there.join("a.txt");
    write(&a, b"a\n");
    set_mtime(&a, 1_600_000_000);
    let local = t.path().join("local");
    fs::create_dir_all(&local).unwrap();
    let state = t.path().join("state");
    let pull = |extra: &[&str]| {
        run(robosync(&sshd, &state)
            .current_dir(&local)
            .args(extra)
            .arg(format!("robot:{}", a.display()))
            .arg("b.txt"))
        .success()
    };
    pull(&[]);
    write(&a, b"z\n");
    set_mtime(&a, 1_600_000_000);
    pull(&[]);
    assert_eq!(
        fs::read(local.join("b.txt")).unwrap(),
        b"a\n",
        "quick check: same"
    );
    pull(&["-c"]);
    assert_eq!(
        fs::read(local.join("b.txt")).unwrap(),
        b"z\n",
        "-c sees the edit"
    );
}

/// A big single file under a new name, killed mid-transfer, resumes: the
/// rerun sends (push) and fetches (pull) less than the whole file, and the
/// copy is whole under the new name.
#[test]
fn a_renamed_single_file_resumes_both_ways() {
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let size = 64 << 20;
    let big = t.path().join("src/big.bin");
    write(&big, &bytes(size, 7));
    let x = sshd.mkdir("x");
    let state = t.path().join("state");
    let args = ["--connections", "1", "--channels", "1"];
    let push_dest = format!("robot:{}", x.join("renamed.bin").display());
    let mut push = robosync_with(&cfg, &state);
    push.args(args).arg(&big).arg(&push_dest);
    assert!(
        kill_when(&mut push, || proxy.stats().up, (size / 2) as u64),
        "the push finished before it could be killed"
    );
    let r = run(robosync_with(&cfg, &state)
        .args(args)
        .arg("--json")
        .arg(&big)
        .arg(&push_dest))
    .success();
    let sent = r.json()["bytes_transferred"].as_u64().unwrap();
    assert!(sent < size as u64, "the rerun sent {sent} of {size} bytes");
    assert_eq!(
        fs::read(x.join("renamed.bin")).unwrap(),
        fs::read(&big).unwrap()
    );
    assert!(!x.join("big.bin").exists());

    let local = t.path().join("local");
    fs::create_dir_all(&local).unwrap();
    let pull_src = format!("robot:{}", x.join("renamed.bin").display());
    let mut pull = robosync_with(&cfg, &state);
    pull.current_dir(&local)
        .args(args)
        .arg(&pull_src)
        .arg("again.bin");
    let down = proxy.stats().down;
    assert!(
        kill_when(&mut pull, || proxy.stats().down - down, (size / 2) as u64),
        "the pull finished before it could be killed"
    );
    let r = run(robosync_with(&cfg, &state)
        .current_dir(&local)
        .args(args)
        .arg("--json")
        .arg(&pull_src)
        .arg("again.bin"))
    .success();
    let fetched = r.json()["bytes_transferred"].as_u64().unwrap();
    assert!(
        fetched < size as u64,
        "the rerun fetched {fetched} of {size} bytes"
    );
    assert_eq!(
        fs::read(local.join("again.bin")).unwrap(),
        fs::read(&big).unwrap()
    );
    let names: Vec<_> = fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".robosync")
        .collect();
    assert_eq!(names, ["again.bin"], "no temp or other name left");
}

/// `rsync -a ARGS...` in `cwd` that may fail: its exit code.
fn rsync_code(cwd: &Path, args: &[&str]) -> i32 {
    Command::new("rsync")
        .current_dir(cwd)
        .arg("-a")
        .args(args)
        .output()
        .expect("rsync is installed by fixtures/setup.sh")
        .status
        .code()
        .unwrap_or(-1)
}

/// `base/src` with f.txt and g.txt; `dest/f.txt` a directory (with
/// `inner/z` when `full`) where the file should go.
fn dir_in_the_way(base: &Path, dest: &Path, full: bool) {
    write(&base.join("src/f.txt"), b"f\n");
    write(&base.join("src/g.txt"), b"g\n");
    set_mtime(&base.join("src/f.txt"), 1_600_000_000);
    set_mtime(&base.join("src/g.txt"), 1_600_000_001);
    fs::create_dir_all(dest.join("f.txt/inner")).unwrap();
    if full {
        write(&dest.join("f.txt/inner/z"), b"z\n");
        set_mtime(&dest.join("f.txt/inner/z"), 1_500_000_000);
    }
}

/// A non-empty directory where a file goes, as rsync: not replaced without
/// --delete (exit 23, "cannot delete non-empty directory", the rest lands),
/// replaced with it; an empty one is replaced either way. Push and pull,
/// tree and single-file forms.
#[test]
fn non_empty_directory_in_the_way_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let state = t.path().join("state");
    let mut i = 0;
    for pull in [false, true] {
        for (full, delete, single) in [
            (true, false, false),
            (true, true, false),
            (false, false, false),
            (true, false, true),
            (false, false, true),
        ] {
            i += 1;
            let what = format!("pull {pull}, non-empty {full}, --delete {delete}, single {single}");
            let oracle = t.path().join(format!("oracle{i}"));
            let base = if pull {
                sshd.mkdir(&format!("base{i}"))
            } else {
                t.path().join(format!("base{i}"))
            };
            let dest = if pull {
                t.path().join(format!("dest{i}"))
            } else {
                sshd.mkdir(&format!("dest{i}"))
            };
            dir_in_the_way(&base, &oracle, full);
            dir_in_the_way(&base, &dest, full);
            let src = base.join(if single { "src/f.txt" } else { "src/" });
            let src = format!("{}{}", src.display(), if single { "" } else { "/" });
            let mut args: Vec<String> =
                delete.then(|| "--delete".to_string()).into_iter().collect();
            let o = format!("{}/", oracle.display());
            let code = rsync_code(
                t.path(),
                &[
                    args.iter().map(String::as_str).collect::<Vec<_>>(),
                    vec![src.as_str(), o.as_str()],
                ]
                .concat(),
            );
            if delete {
                // robosync's own guard (half the destination) is not rsync's.
                args.extend(["--max-delete".to_string(), "100".to_string()]);
            }
            if pull {
                args.push(format!("robot:{src}"));
                args.push(format!("{}/", dest.display()));
            } else {
                args.push(src.clone());
                args.push(remote(&dest));
            }
            let r = run(robosync(&sshd, &state).args(&args));
            assert_eq!(r.code(), code, "{what}: {}", r.stderr());
            if code == 23 {
                assert!(
                    r.stderr().contains("cannot delete non-empty directory"),
                    "{what}: {}",
                    r.stderr()
                );
            }
            assert_trees(&oracle, &dest, &what);
            // No state of robosync's inside the user's directory in the way.
            assert!(!dest.join("f.txt/.robosync").exists(), "{what}");
        }
    }
}

/// DEST a symlink to a directory is followed, as rsync (push and pull);
/// DEST a file for a directory source is refused (rsync: "destination must
/// be a directory"), nothing changed.
#[test]
fn symlink_and_file_destinations_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let state = t.path().join("state");
    let base = t.path().join("base");
    data(&base);
    // Push into a remote symlink to a directory.
    let real = sshd.mkdir("real");
    let link = real.parent().unwrap().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let oracle_real = t.path().join("oracle-real");
    fs::create_dir_all(&oracle_real).unwrap();
    let oracle_link = t.path().join("oracle-link");
    std::os::unix::fs::symlink(&oracle_real, &oracle_link).unwrap();
    rsync(&base, "data", &oracle_link);
    run(robosync(&sshd, &state)
        .current_dir(&base)
        .arg("data")
        .arg(format!("robot:{}", link.display())))
    .success();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_trees(&oracle_real, &real, "push into a symlink DEST");
    // Pull into a local one.
    let local_real = t.path().join("local-real");
    fs::create_dir_all(&local_real).unwrap();
    let local_link = t.path().join("local-link");
    std::os::unix::fs::symlink(&local_real, &local_link).unwrap();
    run(robosync(&sshd, &state)
        .arg(format!("robot:{}", real.join("data").display()))
        .arg(&local_link))
    .success();
    assert!(fs::symlink_metadata(&local_link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_trees(&oracle_real, &local_real, "pull into a symlink DEST");

    // A remote file as DEST of a directory.
    let file = sshd.mkdir("files").join("afile");
    write(&file, b"x");
    let r = run(robosync(&sshd, &state)
        .current_dir(&base)
        .arg("data/")
        .arg(format!("robot:{}", file.display())));
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stderr().contains("not a directory"), "{}", r.stderr());
    assert_eq!(fs::read(&file).unwrap(), b"x");
}

/// A directory's mode and mtime (seconds).
fn dir_attrs(p: &Path) -> (u32, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.mtime())
}

/// The sync root's own mode and mtime, as rsync -a carries them: `data/`
/// gives DEST data's, `data` gives DEST/data data's. Push and pull.
#[test]
fn sync_root_mode_and_mtime_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let state = t.path().join("state");
    let there = sshd.mkdir("there");
    let base = t.path().join("base");
    for side in [&base, &there] {
        let d = data(side);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        set_mtime(&d, 1_500_000_000);
    }
    for (i, spelling) in ["data/", "data"].iter().enumerate() {
        let oracle = t.path().join(format!("oracle{i}"));
        fs::create_dir_all(&oracle).unwrap();
        rsync(&base, spelling, &oracle);
        let root = |d: &Path| {
            if i == 0 {
                d.to_path_buf()
            } else {
                d.join("data")
            }
        };
        let want = dir_attrs(&root(&oracle));
        assert_eq!(want, (0o750, 1_500_000_000), "rsync's own result");

        let dest = sshd.mkdir(&format!("push{i}"));
        run(robosync(&sshd, &state)
            .current_dir(&base)
            .arg(spelling)
            .arg(remote(&dest)))
        .success();
        assert_eq!(dir_attrs(&root(&dest)), want, "push {spelling}");

        let local = t.path().join(format!("pull{i}"));
        fs::create_dir_all(&local).unwrap();
        run(robosync(&sshd, &state)
            .arg(format!("robot:{}/{spelling}", there.display()))
            .arg(&local))
        .success();
        assert_eq!(dir_attrs(&root(&local)), want, "pull {spelling}");
    }
}

/// A local source that does not exist is rsync's "link_stat failed": exit
/// 23 naming it, nothing made; among several, the others still land.
#[test]
fn missing_local_source_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    three_sources(&base);
    let state = t.path().join("state");
    let dest = sshd.mkdir("dest");
    let r = run(robosync(&sshd, &state)
        .current_dir(&base)
        .arg("nothere")
        .arg(remote(&dest)));
    assert_eq!(r.code(), 23, "{}", r.stderr());
    assert!(r.stderr().contains("nothere"), "{}", r.stderr());
    assert!(fs::read_dir(&dest).unwrap().next().is_none());
    let r = run(robosync(&sshd, &state)
        .current_dir(&base)
        .args(["nothere", "c.txt"])
        .arg(remote(&dest)));
    assert_eq!(r.code(), 23, "{}", r.stderr());
    assert!(r.stderr().contains("nothere"), "{}", r.stderr());
    assert_eq!(fs::read(dest.join("c.txt")).unwrap(), b"c\n");
}

/// DEST's parent missing, as rsync: a directory source (either spelling)
/// exits 11 and a single file to a new name exits 3, both ways, creating
/// nothing; `--mkpath` makes the parents, as rsync's. DEST itself missing
/// (its parent there) is made, as before.
#[test]
fn missing_destination_parent_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    let base = t.path().join("base");
    data(&base);
    write(&base.join("one.txt"), b"1");
    let cases: [(&str, &str, i32); 4] = [
        ("data", "no/deep", 11),
        ("data/", "no/deep", 11),
        ("one.txt", "no/deep/", 11),
        ("one.txt", "no/new.txt", 3),
    ];
    for (i, (src, dest, code)) in cases.into_iter().enumerate() {
        let oracle = t.path().join(format!("oracle{i}"));
        fs::create_dir(&oracle).unwrap();
        assert_eq!(
            rsync_code(&base, &[src, &format!("{}/{dest}", oracle.display())]),
            code
        );
        assert!(!oracle.join("no").exists());

        // Push.
        let root = sshd.mkdir(&format!("push{i}"));
        let r = run(robosync(&sshd, &t.path().join("state"))
            .current_dir(&base)
            .arg(src)
            .arg(format!("robot:{}/{dest}", root.display())));
        assert_eq!(r.code(), code, "push {src} {dest}: {}", r.stderr());
        assert!(r.stderr().contains("--mkpath"), "{}", r.stderr());
        assert!(!root.join("no").exists(), "push {src} {dest} made a parent");

        // Pull (a file source is the remote copy of the same spelling).
        let local = t.path().join(format!("pull{i}"));
        fs::create_dir(&local).unwrap();
        let remote_src = format!("robot:{}/{src}", base.display());
        let r = run(robosync(&sshd, &t.path().join("state"))
            .arg(&remote_src)
            .arg(format!("{}/{dest}", local.display())));
        assert_eq!(r.code(), code, "pull {src} {dest}: {}", r.stderr());
        assert!(
            !local.join("no").exists(),
            "pull {src} {dest} made a parent"
        );

        // --mkpath: as rsync --mkpath, everything lands.
        assert_eq!(
            rsync_code(
                &base,
                &["--mkpath", src, &format!("{}/{dest}", oracle.display())]
            ),
            0
        );
        run(robosync(&sshd, &t.path().join("state"))
            .current_dir(&base)
            .arg("--mkpath")
            .arg(src)
            .arg(format!("robot:{}/{dest}", root.display())))
        .success();
        run(robosync(&sshd, &t.path().join("state"))
            .arg("--mkpath")
            .arg(&remote_src)
            .arg(format!("{}/{dest}", local.display())))
        .success();
        assert_trees(&oracle, &root, &format!("push --mkpath {src} {dest}"));
        assert_trees(&oracle, &local, &format!("pull --mkpath {src} {dest}"));
    }
}

/// A symlink named without a trailing slash is copied as the link itself,
/// as rsync (push and pull, a link to a directory and to a file); with the
/// slash, the directory it points to is copied, as rsync.
#[test]
fn a_symlink_source_is_the_link_itself_as_rsync() {
    let sshd = Sshd::start();
    let t = tempdir();
    // Remote paths are local ones here: one base serves both directions.
    let base = sshd.mkdir("base");
    data(&base);
    std::os::unix::fs::symlink("data", base.join("to_dir")).unwrap();
    std::os::unix::fs::symlink("data/top.txt", base.join("to_file")).unwrap();
    let state = t.path().join("state");
    for (i, src) in ["to_dir", "to_file", "to_dir/"].into_iter().enumerate() {
        let oracle = t.path().join(format!("oracle{i}"));
        fs::create_dir(&oracle).unwrap();
        rsync(&base, src, &oracle);
        let pushed = sshd.mkdir(&format!("pushed{i}"));
        run(robosync(&sshd, &state)
            .current_dir(&base)
            .arg(src)
            .arg(remote(&pushed)))
        .success();
        assert_trees(&oracle, &pushed, &format!("push {src}"));
        let pulled = t.path().join(format!("pulled{i}"));
        fs::create_dir(&pulled).unwrap();
        run(robosync(&sshd, &state)
            .arg(format!("robot:{}/{src}", base.display()))
            .arg(format!("{}/", pulled.display())))
        .success();
        assert_trees(&oracle, &pulled, &format!("pull {src}"));
        if !src.ends_with('/') {
            let link = pulled.join(src);
            assert!(
                link.symlink_metadata().unwrap().file_type().is_symlink(),
                "pull {src}"
            );
        }
    }
}
