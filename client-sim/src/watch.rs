//! `yorker-sim watch`: one human client redrawing a live scorecard.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

/// Follows a match until the limits; returns the exit code. Built on the one client session of
/// `yorker-wire`: it reconnects by itself (backoff with jitter, GOAWAY hints) and resumes the
/// match from the last ball it showed.
pub fn run(a: &WatchArgs) -> Result<i32, String> {
    let mut cs = ClientSession::new(ClientConfig {
        name: "yorker-sim watch".into(),
        seed: crate::fleet::unix_us(),
        ..ClientConfig::default()
    });
    cs.subscribe(&match_topic(a.match_id), true);
    let tty = std::io::stdout().is_terminal();
    let mut card = Scorecard::default();
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 65536];
    while start.elapsed() < Duration::from_secs(a.seconds)
        && (a.updates == 0 || card.updates < a.updates)
    {
        if cs.poll_connect(now()) {
            match TcpStream::connect_timeout(&a.addr, Duration::from_secs(5)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    cs.on_connected(now());
                }
                Err(_) => cs.on_disconnected(now()),
            }
        }
        if let Some(s) = stream.as_mut() {
            let out = cs.poll_transmit(now());
            if !out.is_empty() && s.write_all(&out).is_err() {
                stream = None;
                cs.on_disconnected(now());
            }
        }
        let wait = cs
            .poll_timeout()
            .map_or(500, |t| t.saturating_sub(now()))
            .clamp(1, 500);
        match stream.as_mut() {
            Some(s) => {
                s.set_read_timeout(Some(Duration::from_millis(wait)))
                    .map_err(|e| e.to_string())?;
                match s.read(&mut buf) {
                    Ok(0) => {
                        stream = None;
                        cs.on_disconnected(now());
                    }
                    Ok(n) => cs.handle_bytes(&buf[..n], now()),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => {
                        stream = None;
                        cs.on_disconnected(now());
                    }
                }
            }
            None => std::thread::sleep(Duration::from_millis(wait)),
        }
        if cs.poll_timeout().is_some_and(|t| t <= now()) {
            cs.handle_timeout(now());
        }
        while let Some(ev) = cs.poll_event() {
            match ev {
                ClientEvent::Update { update, .. } | ClientEvent::Reset { update, .. } => {
                    if let Ok(e) = BallEvent::decode(&update.payload) {
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
                ClientEvent::Disconnected {
                    reason,
                    retry_in_ms,
                } => {
                    stream = None;
                    match retry_in_ms {
                        Some(ms) => eprintln!("disconnected ({reason:?}); reconnecting in {ms} ms"),
                        None => return Err(format!("disconnected: {reason:?}")),
                    }
                }
                _ => {}
            }
        }
    }
    cs.close();
    Ok(0)
}
