//! Follows one topic with the reference client session over a blocking socket: the example
//! of docs/CLIENTS.md. `cargo run -p yorker-wire --example follow -- 127.0.0.1:7000 match/42`

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use yorker_wire::{ClientConfig, ClientEvent, ClientSession};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let topic = args.next().unwrap_or_else(|| "match/42".into());
    let mut cs = ClientSession::new(ClientConfig {
        seed: std::process::id() as u64,
        ..Default::default()
    });
    cs.subscribe(&topic, true);
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let (mut sock, mut buf) = (None::<TcpStream>, vec![0u8; 65536]);
    loop {
        if cs.poll_connect(now()) {
            match TcpStream::connect(&addr) {
                Ok(s) => {
                    sock = Some(s);
                    cs.on_connected(now())
                }
                Err(_) => cs.on_disconnected(now()),
            }
        }
        if let Some(s) = sock.as_mut() {
            s.write_all(&cs.poll_transmit(now()))?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            match s.read(&mut buf) {
                Ok(0) => {
                    sock = None;
                    cs.on_disconnected(now())
                }
                Ok(n) => cs.handle_bytes(&buf[..n], now()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    sock = None;
                    cs.on_disconnected(now())
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        cs.handle_timeout(now());
        while let Some(ev) = cs.poll_event() {
            match ev {
                ClientEvent::Update { update, .. } | ClientEvent::Reset { update, .. } => {
                    println!("seq {} ({} bytes)", update.seq, update.payload.len())
                }
                ClientEvent::Disconnected {
                    reason,
                    retry_in_ms,
                } => {
                    sock = None;
                    println!("disconnected: {reason:?}, retrying in {retry_in_ms:?} ms");
                }
                _ => {}
            }
        }
    }
}
