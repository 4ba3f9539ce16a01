//! robosync's integration tests: the real binary against a real OpenSSH sshd
//! set up like a robot node (see robosync-testbed). One test binary, one
//! module per area.

mod util;

mod connect;
mod differential;
mod doctor;
mod engine;
mod exit_codes;
mod faults;
mod filters;
mod foundation;
mod fuzz;
mod integrity;
mod listing;
mod locking;
mod ops;
mod packaging;
mod paths;
mod pull;
mod reconnect;
mod resume;
mod robot_key;
mod semantics;
mod ssh_policy;
mod state;
mod transport;
