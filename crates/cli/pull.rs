//! Pull: remote tree → local destination (work in progress).

use std::path::Path;

use robosync_scanner::Filter;
use robosync_transport::ssh_config::HostConfig;
use robosync_transport::Target;

use crate::run::Run;
use crate::sync::{fail, Failure, EXIT_USAGE};
use crate::Args;

pub async fn pull_run(
    _args: &Args,
    _run: &std::sync::Arc<Run>,
    _filter: Filter,
    _remote: &[u8],
    _target: Target,
    _local: &Path,
    _label: &str,
) -> Result<Vec<String>, Failure> {
    Err(fail(EXIT_USAGE, "pull is not implemented yet"))
}

pub fn run_auth_hook(_cmd: &str, _cfg: &HostConfig) -> Result<(), String> {
    Ok(())
}
