//! `robosync completions SHELL` and `robosync man`: shell completions
//! (clap_complete) and the man page (clap_mangen), generated from the same
//! argument definitions the binary parses, so they cannot drift.

use std::ffi::OsString;

use clap::{Arg, CommandFactory};
use clap_complete::Shell;

use robosync_sync::EXIT_USAGE;

/// The whole command line: the sync's options and positionals, and the
/// subcommands recognised by their first word (see `main::subcommand`).
pub fn full_command() -> clap::Command {
    crate::Args::command()
        .subcommand_negates_reqs(true)
        .args_conflicts_with_subcommands(true)
        .subcommand(crate::subcommands::DoctorArgs::command().name("doctor"))
        .subcommand(crate::subcommands::RobotKeyArgs::command().name("robot-key"))
        .subcommand(crate::subcommands::StateArgs::command().name("state"))
        .subcommand(
            clap::Command::new("completions")
                .about("Print shell completions for robosync (bash, zsh, fish, elvish, powershell)")
                .arg(
                    Arg::new("shell")
                        .value_parser(clap::value_parser!(Shell))
                        .required(true),
                ),
        )
        .subcommand(clap::Command::new("man").about("Print robosync's man page (roff) on stdout"))
}

/// Runs `robosync completions SHELL` or `robosync man`; the exit code.
pub fn main(argv: Vec<OsString>) -> i32 {
    let mut cmd = full_command();
    let name = argv[0].to_string_lossy().replace("robosync ", "");
    let sub = cmd
        .find_subcommand(&name)
        .expect("a known subcommand")
        .clone()
        .bin_name(argv[0].to_string_lossy().into_owned());
    let matches = match sub.try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return EXIT_USAGE;
        }
        Err(e) => e.exit(),
    };
    // Into a buffer first: `robosync man | head` must not panic on a closed pipe.
    let mut out = Vec::new();
    if name == "completions" {
        let shell = *matches.get_one::<Shell>("shell").expect("required");
        clap_complete::generate(shell, &mut cmd, "robosync", &mut out);
    } else {
        cmd.build();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut out)
            .expect("rendering into memory");
        // A section per subcommand: what it does, then its options; and
        // a subsection per subcommand of its own (`state list`, `state clean`).
        for sub in cmd.get_subcommands() {
            let name = sub.get_name().to_uppercase();
            man_section(&mut out, ".SH", &name, sub);
            for inner in sub.get_subcommands().filter(|i| i.get_name() != "help") {
                let inner_name = format!("{name} {}", inner.get_name().to_uppercase());
                man_section(&mut out, ".SS", &inner_name, inner);
            }
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().write_all(&out);
    0
}

/// A man page section (`.SH`) or subsection (`.SS`) "ROBOSYNC NAME": what
/// `cmd` does, then its options.
fn man_section(out: &mut Vec<u8>, level: &str, name: &str, cmd: &clap::Command) {
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    out.extend_from_slice(format!("{level} \"ROBOSYNC {name}\"\n{about}\n").as_bytes());
    let mut options = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render_options_section(&mut options)
        .expect("rendering into memory");
    let options = String::from_utf8_lossy(&options).replacen(".SH OPTIONS\n", "", 1);
    out.extend_from_slice(options.as_bytes());
}
