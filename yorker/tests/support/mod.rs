//! Shared by the tests that run `yorker serve` as a process with an admin listener.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Spawns `yorker serve <args> --admin-listen 127.0.0.1:0` and returns it with its listening
/// and admin addresses, read from its log; its stderr keeps being drained so that the engine
/// never blocks on a full pipe.
pub fn serve_with_admin(args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    run_with_admin("serve", args)
}

/// As [`serve_with_admin`], for `yorker <command>` (`serve` or `relay`).
pub fn run_with_admin(command: &str, args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .arg(command)
        .args(args)
        .args(["--admin-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn yorker");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let (mut addr, mut admin) = (None, None);
    let mut line = String::new();
    while addr.is_none() || admin.is_none() {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "yorker exited early");
        let after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        addr = addr.or(after("listening on "));
        admin = admin.or(after("admin listener on http://"));
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while err.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    (child, addr.unwrap(), admin.unwrap())
}
