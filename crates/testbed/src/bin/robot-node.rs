//! Starts a robot-like sshd on loopback for demos and manual tries; prints the
//! ssh_config file to use with `-F`, then serves until killed.

fn main() {
    let sshd = robosync_testbed::Sshd::start();
    println!("{}", sshd.ssh_config.display());
    println!("{}", sshd.dir.path().display());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
