//! Issue 18: what packaging hands an operator: shell completions and a man
//! page generated from the argument definitions themselves (so they name
//! the subcommands and every option), and `--version` with the commit.

use std::process::Command;

use crate::util::*;

fn robosync_args(args: &[&str]) -> Ran {
    run(Command::new(env!("CARGO_BIN_EXE_robosync")).args(args))
}

#[test]
fn completions_cover_options_and_subcommands_and_parse() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let r = robosync_args(&["completions", shell]);
        assert_eq!(r.code(), 0, "{shell}: {}", r.stderr());
        for word in [
            "doctor",
            "robot-key",
            "state",
            "older-than",
            "bwlimit",
            "delete-excluded",
        ] {
            assert!(r.stdout().contains(word), "{shell} lacks {word}");
        }
    }
    // The bash script is valid bash.
    let t = tempdir();
    let f = t.path().join("robosync.bash");
    std::fs::write(&f, robosync_args(&["completions", "bash"]).stdout()).unwrap();
    let ok = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(ok.success());
    // An unknown shell is a usage error.
    assert_eq!(robosync_args(&["completions", "tcsh"]).code(), 1);
}

#[test]
fn man_page_has_every_option_and_a_section_per_subcommand() {
    let r = robosync_args(&["man"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let page = r.stdout();
    assert!(page.contains(".TH robosync 1"), "{page}");
    for want in [
        "ROBOSYNC DOCTOR",
        "ROBOSYNC ROBOT-KEY",
        "ROBOSYNC COMPLETIONS",
        "ROBOSYNC STATE",
        "older\\-than",
        "bwlimit",
        "probe\\-size",
        "any\\-address",
    ] {
        assert!(page.contains(want), "{want} missing");
    }
}

#[test]
fn version_names_the_commit_and_the_features() {
    let r = robosync_args(&["--version"]);
    assert_eq!(r.code(), 0);
    let v = r.stdout();
    assert!(
        v.starts_with(&format!("robosync {} (git ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("features: "), "{v}");
    // From a git checkout, the commit the binary was built from.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success());
    match head {
        Some(o) => {
            let head = String::from_utf8_lossy(&o.stdout).trim().to_string();
            assert!(
                v.contains(&format!("(git {head};")),
                "{v} is not from {head}"
            );
        }
        None => assert!(v.contains("(git unknown;"), "{v}"),
    }
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn demo_run_twice_leaves_no_process_and_no_files() {
    let root = robosync_testbed::workspace_root();
    let tmp = tempdir();
    for round in 1..=2 {
        let r = run(Command::new("bash")
            .arg(root.join("fixtures/demo.sh"))
            .env("DEMO_PROFILE", "dev")
            .env("TMPDIR", tmp.path())
            .stdin(std::process::Stdio::null()));
        assert_eq!(r.code(), 0, "round {round}: {}\n{}", r.stdout(), r.stderr());
        assert!(
            r.stdout().contains("round trip identical"),
            "{}",
            r.stdout()
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "round {round} left {left:?}");
        let running = processes_mentioning(&tmp.path().display().to_string());
        assert!(
            running.is_empty(),
            "round {round} left running: {running:?}"
        );
    }
}
