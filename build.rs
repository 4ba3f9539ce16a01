//! Build information for `robosync --version`: the git commit the binary
//! was built from (when built from a git checkout; "unknown" from a source
//! archive or a registry), the enabled Cargo features, the profile and the
//! target.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_some() {
        // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
        for (ask, rel) in [("--git-dir", "HEAD"), ("--git-common-dir", "packed-refs")] {
            if let Some(dir) = git(&["rev-parse", ask]) {
                println!(
                    "cargo:rerun-if-changed={}",
                    PathBuf::from(dir).join(rel).display()
                );
            }
        }
        if let (Some(common), Some(name)) = (
            git(&["rev-parse", "--git-common-dir"]),
            git(&["symbolic-ref", "-q", "HEAD"]),
        ) {
            println!(
                "cargo:rerun-if-changed={}",
                PathBuf::from(common).join(name).display()
            );
        }
    }
    let commit = commit.unwrap_or_else(|| "unknown".into());
    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| {
            k.strip_prefix("CARGO_FEATURE_")
                .map(|f| f.to_lowercase().replace('_', "-"))
        })
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(",")
    };
    println!(
        "cargo:rustc-env=ROBOSYNC_LONG_VERSION={} (git {commit}; {} build; {}; features: {features})",
        std::env::var("CARGO_PKG_VERSION").unwrap(),
        std::env::var("PROFILE").unwrap_or_default(),
        std::env::var("TARGET").unwrap_or_default(),
    );
}
