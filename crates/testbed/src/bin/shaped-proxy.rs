//! Starts the testbed's shaping proxy in front of a local port, for manual
//! experiments: `shaped-proxy TARGET_PORT ONE_WAY_DELAY_MS [RATE_BYTES_PER_S]`.
//! Prints the proxy's port, then serves until killed.

use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let (target, delay, rate) = match args[..] {
        [t, d] => (t, d, 0),
        [t, d, r] => (t, d, r),
        _ => panic!("usage: shaped-proxy TARGET_PORT ONE_WAY_DELAY_MS [RATE_BYTES_PER_S]"),
    };
    let proxy = robosync_testbed::Proxy::with_shaping(
        u16::try_from(target).expect("a port"),
        robosync_testbed::Shaping {
            one_way_delay: Duration::from_millis(delay),
            rate,
        },
    );
    println!("{}", proxy.port);
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
