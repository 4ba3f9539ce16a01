//! Issue 15, observations 1 and 10: rsync's filter rules, push and pull,
//! with rsync itself as the oracle (the random cases are in differential.rs).

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Runs `rsync -a RULES osrc/ odest/`, the same as a push and as a pull with
/// robosync, each from `make(src, dest)`, and compares the three trees.
fn same_as_rsync(rules: &[&str], make: impl Fn(&Path, &Path)) {
    // Fixed mtimes: trees made a second apart must still compare equal.
    let make = |src: &Path, dest: &Path| {
        make(src, dest);
        for root in [src, dest] {
            for (rel, item) in snapshot(root) {
                if matches!(item, Item::File { .. }) {
                    set_mtime(&root.join(rel), 1_600_000_000);
                }
            }
        }
    };
    let sshd = Sshd::start();
    let t = tempdir();
    let slash = |p: &Path| format!("{}/", p.display());

    let (osrc, odest) = (t.path().join("osrc"), t.path().join("odest"));
    make(&osrc, &odest);
    let out = Command::new("rsync")
        .arg("-a")
        .args(rules)
        .arg(slash(&osrc))
        .arg(slash(&odest))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let (src, dest) = (t.path().join("src"), sshd.mkdir("dest"));
    make(&src, &dest);
    run(robosync(&sshd, &t.path().join("s1"))
        .args(["--max-delete", "100"])
        .args(rules)
        .arg(slash(&src))
        .arg(format!("{}/", remote(&dest))))
    .success();
    assert_same_tree(&odest, &dest);

    let (rsrc, ldest) = (sshd.mkdir("rsrc"), t.path().join("ldest"));
    make(&rsrc, &ldest);
    run(robosync(&sshd, &t.path().join("s2"))
        .args(["--max-delete", "100"])
        .args(rules)
        .arg(format!("{}/", remote(&rsrc)))
        .arg(slash(&ldest)))
    .success();
    assert_same_tree(&odest, &ldest);
}

/// A directory the source lacks that holds an excluded file: rsync deletes
/// the rest of it and keeps the directory ("cannot delete non-empty
/// directory"); it must not go whole with the protected file in it.
#[test]
fn delete_keeps_a_directory_that_holds_an_excluded_file() {
    same_as_rsync(&["--delete", "--exclude", "*.tmp"], |src, dest| {
        write(&src.join("keep.txt"), b"keep\n");
        write(&dest.join("old/x.tmp"), b"protected\n");
        write(&dest.join("old/y.txt"), b"goes\n");
        write(&dest.join("old/deeper/z.txt"), b"goes\n");
        write(&dest.join("gone/w.txt"), b"goes with its dir\n");
    });
}

/// --filter with protect, hide, show and risk rules, `+ `/`- ` prefixes in
/// --exclude/--include values, --include-from and a merge file.
#[test]
fn filter_rules_prefixes_and_files_as_rsync() {
    let t = tempdir();
    let include_from = t.path().join("include-from");
    fs::write(&include_from, "# comment\nsrc/\nsrc/*.c\n- *\n").unwrap();
    let merge = t.path().join("merge");
    fs::write(&merge, "; comment\nP /notes/\n+ /docs/\n").unwrap();
    let rules = [
        "--delete",
        "--exclude",
        "+ keep.tmp",
        "--include",
        "- *.tmp",
        "-f",
        "H secret.txt",
        "-f",
        "S /shown.log",
        "-f",
        "- *.log",
        "-f",
        &format!("merge {}", merge.display()),
        "--filter",
        "R /docs/old.txt",
        "--include-from",
        include_from.to_str().unwrap(),
    ];
    same_as_rsync(&rules, |src, dest| {
        write(&src.join("keep.tmp"), b"included by a + prefix\n");
        write(&src.join("drop.tmp"), b"excluded by a - prefix\n");
        write(&src.join("secret.txt"), b"hidden\n");
        write(&src.join("shown.log"), b"shown\n");
        write(&src.join("other.log"), b"excluded\n");
        write(&src.join("src/a.c"), b"int a;\n");
        write(&src.join("src/a.o"), b"object\n");
        write(&src.join("docs/new.txt"), b"new\n");
        write(
            &dest.join("secret.txt"),
            b"hidden from the sender: deleted\n",
        );
        write(&dest.join("server.tmp"), b"excluded: protected\n");
        write(
            &dest.join("notes/n.txt"),
            b"protected by P from the merge file\n",
        );
        write(&dest.join("docs/old.txt"), b"at risk: deleted\n");
        write(
            &dest.join("stale"),
            b"excluded by - * in the include-from file\n",
        );
    });
}

/// --delete-excluded: plain excludes stop protecting, `P` still does.
#[test]
fn delete_excluded_deletes_excluded_but_not_protected() {
    let rules = [
        "--delete-excluded",
        "-f",
        "-sr both.tmp",
        "--exclude",
        "*.tmp",
        "-f",
        "P /keep/",
    ];
    same_as_rsync(&rules, |src, dest| {
        write(&src.join("a.txt"), b"a\n");
        write(&src.join("x.tmp"), b"not sent\n");
        write(&dest.join("x.tmp"), b"excluded: deleted\n");
        write(&dest.join("sub/y.tmp"), b"excluded: deleted\n");
        write(&dest.join("keep/k"), b"protected\n");
        write(
            &dest.join("both.tmp"),
            b"a both-sides rule still protects\n",
        );
    });
}

/// Rules robosync cannot honour are refused with the usage code and one
/// line, before anything connects; a rules file that cannot be read is
/// rsync's file-selection error (3).
#[test]
fn unsupported_filter_rules_are_refused() {
    let t = tempdir();
    for rule in [
        ": .rsync-filter",
        "dir-merge .f",
        "-p x",
        "x y",
        "merge /nonexistent/rules",
    ] {
        let ran = run(Command::new(env!("CARGO_BIN_EXE_robosync"))
            .arg("--state-dir")
            .arg(t.path())
            .args(["-f", rule, "./a", "nohost.invalid:/b"]));
        let code = if rule.starts_with("merge") { 3 } else { 1 };
        assert_eq!(ran.code(), code, "{rule:?}: {}", ran.stderr());
        let err = ran.stderr();
        assert_eq!(err.lines().count(), 1, "{rule:?}: {err}");
        assert!(err.contains("filter"), "{rule:?}: {err}");
    }
}
