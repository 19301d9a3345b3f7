//! `yorker-sim watch`: one human client redrawing a live scorecard.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Args;
use yorker_wire::score::BallEvent;
use yorker_wire::*;

use crate::feed::match_topic;
use crate::scorecard::Scorecard;

/// Flags of `yorker-sim watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Engine address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Match to follow.
    #[arg(long = "match", default_value_t = 1)]
    pub match_id: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Stop after this many updates (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub updates: u64,
}

/// Follows a match until the limits; returns the exit code.
pub fn run(a: &WatchArgs) -> Result<i32, String> {
    let mut s =
        TcpStream::connect(a.addr).map_err(|e| format!("cannot connect to {}: {e}", a.addr))?;
    let mut b = BytesMut::new();
    for f in [
        Frame::Hello(Hello {
            version: 1,
            role: Role::Subscriber,
            client_name: "yorker-sim watch".into(),
            token: String::new(),
        }),
        Frame::Subscribe(Subscribe {
            request_id: 1,
            entries: vec![SubscribeEntry {
                topic: match_topic(a.match_id),
                resume: None,
                conflate: true,
            }],
        }),
    ] {
        f.encode(&mut b).map_err(|e| e.to_string())?;
    }
    s.write_all(&b).map_err(|e| e.to_string())?;
    let tty = std::io::stdout().is_terminal();
    let mut dec = Decoder::new(MAX_MAX_FRAME);
    let mut card = Scorecard::default();
    let start = Instant::now();
    let mut heartbeat = Duration::from_secs(5);
    let mut last_ping = Instant::now();
    let mut buf = vec![0u8; 65536];
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    while start.elapsed() < Duration::from_secs(a.seconds)
        && (a.updates == 0 || card.updates < a.updates)
    {
        if last_ping.elapsed() >= heartbeat / 3 {
            let ping = Frame::Ping { nonce: 0 }
                .to_bytes()
                .map_err(|e| e.to_string())?;
            s.write_all(&ping).map_err(|e| e.to_string())?;
            last_ping = Instant::now();
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => dec.feed(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        }
        while let Some(f) = dec.next_frame().map_err(|e| e.to_string())? {
            match f {
                Frame::Welcome(w) => heartbeat = Duration::from_millis(w.heartbeat_ms as u64),
                Frame::Update(u) => {
                    if let Ok(e) = BallEvent::decode(&u.payload) {
                        card.apply(e);
                        if tty {
                            print!("\x1b[2J\x1b[H");
                        }
                        print!("{}", card.render());
                        if !tty {
                            println!("--");
                        }
                        let _ = std::io::stdout().flush();
                    }
                }
                Frame::GoAway(g) => {
                    println!(
                        "server going away: reconnect after {} ms",
                        g.reconnect_after_ms
                    );
                    return Ok(0);
                }
                Frame::Error(e) => return Err(format!("server error {}: {}", e.code, e.message)),
                _ => {}
            }
        }
    }
    Ok(0)
}
