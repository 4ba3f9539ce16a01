//! Setting up and diagnosing a robot-node login, for `robosync doctor` and
//! `robosync robot-key`.
//!
//! - [`doctor`]: checks each step a connection meets (ssh config, keys, DNS,
//!   TCP, host key, authentication, SFTP, the server's limits, an optional
//!   write probe) and says how to fix what fails; its exit code is the one a
//!   sync would have ended with (`robosync_sync::exit_code`).
//! - [`robot_key`]: makes a dedicated key and prints the line to register,
//!   the `~/.ssh/config` stanza and the doctor command to run.
//!
//! The binary parses the subcommands' arguments (clap) and passes plain
//! option structs ([`DoctorOptions`], [`RobotKeyOptions`]); both print
//! their results on stdout.

#![deny(missing_docs)]

pub mod doctor;
pub mod robot_key;

pub use doctor::DoctorOptions;
pub use robot_key::RobotKeyOptions;
