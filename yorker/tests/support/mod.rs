//! Shared by the tests that run `yorker serve` as a process with an admin listener.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// One HTTP/1.1 request (Connection: close); status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}
