//! Starts a robot-like sshd on loopback for demos and manual tries; prints the
//! ssh_config file to use with `-F`, then serves until SIGTERM or SIGINT,
//! when it stops the sshd and removes its keys and files.

fn main() {
    let sshd = robosync_testbed::Sshd::start();
    // Blocked once the sshd runs (it must not inherit the mask), so the
    // signals wait for `sigwait` below instead of killing this process past
    // the sshd's clean-up. SAFETY: libc calls on a local, initialised set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    println!("{}", sshd.ssh_config.display());
    println!("{}", sshd.dir.path().display());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    let mut sig = 0;
    // SAFETY: waits on the set blocked above.
    unsafe { libc::sigwait(&set, &mut sig) };
    drop(sshd);
}
