//! `ssh -G`: OpenSSH's own answer, parsed into the shared dump.

use super::*;

pub(super) fn resolve_with_program(
    program: &Path,
    req: &ConfigRequest,
) -> Result<HostConfig, ConfigError> {
    let mut cmd = Command::new(program);
    cmd.arg("-G");
    if let Some(file) = &req.config_file {
        cmd.arg("-F").arg(file);
    }
    for option in &req.options {
        cmd.arg("-o").arg(option);
    }
    if let Some(user) = &req.user {
        cmd.arg("-l").arg(user);
    }
    if let Some(port) = req.port {
        cmd.arg("-p").arg(port.to_string());
    }
    for id in &req.identity_files {
        cmd.arg("-i").arg(id);
    }
    match req.family {
        Some(AddressFamily::Inet) => {
            cmd.arg("-4");
        }
        Some(AddressFamily::Inet6) => {
            cmd.arg("-6");
        }
        _ => {}
    }
    // `--` keeps a destination starting with `-` from being read as an option.
    cmd.arg("--").arg(&req.host);
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|source| ConfigError::SshGSpawn {
        program: program.display().to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(ConfigError::SshG {
            host: req.host.clone(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let dump = Dump::from_ssh_g(&out.stdout);
    let local = LocalContext::current()?;
    let (_, alias) = split_user_host(&req.host);
    host_config_from_dump(alias, &dump, &local, request_warnings(req, &local))
}
