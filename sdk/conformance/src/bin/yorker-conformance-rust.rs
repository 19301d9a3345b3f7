//! The Rust SDK's conformance driver: the SDK behind the line protocol every SDK's driver
//! speaks (docs/CLIENTS.md, "Conformance"), so that one suite (sdk/conformance) tests them all.
//! Commands on stdin, events on stdout, one per line.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

use yorker_client::{Client, Config, Disconnect, Event};

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn reason(r: &Disconnect) -> String {
    match r {
        Disconnect::ConnectionLost => "connection_lost".into(),
        Disconnect::GoAway { code, after_ms } => format!("goaway {code} {after_ms}"),
        Disconnect::Error { code, .. } => format!("error {code}"),
        Disconnect::ServerSilent => "server_silent".into(),
        Disconnect::HandshakeTimeout => "handshake_timeout".into(),
        Disconnect::Protocol(_) => "protocol".into(),
        Disconnect::Requested => "requested".into(),
        Disconnect::Closed => "closed".into(),
        _ => "other".into(),
    }
}

fn line(ev: &Event) -> String {
    match ev {
        Event::Connected { session_id, epoch } => format!("connected {session_id} {epoch}"),
        Event::Subscribed { topic, result } => format!("subscribed {topic} {}", *result as u8),
        Event::Update {
            topic,
            seq,
            payload,
            snapshot,
            ..
        } => format!("update {topic} {seq} {} {}", *snapshot as u8, hex(payload)),
        Event::Reset {
            topic,
            seq,
            payload,
        } => format!("reset {topic} {seq} {}", hex(payload)),
        Event::Disconnected {
            reason: r,
            retry_in_ms,
        } => format!(
            "disconnected {} retry {}",
            reason(r),
            retry_in_ms.map_or("none".to_string(), |m| m.to_string())
        ),
        other => format!("other {other:?}"),
    }
}

fn main() {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut out = std::io::stdout();
    let mut client: Option<Client> = None;
    loop {
        match rx.try_recv() {
            Ok(cmd) => {
                let w: Vec<&str> = cmd.split_whitespace().collect();
                match w.as_slice() {
                    ["connect", addr, token] => {
                        let token = if *token == "-" { "" } else { token };
                        let mut cfg = Config::new(addr, token);
                        cfg.backoff_base_ms = 200;
                        cfg.backoff_max_ms = 2_000;
                        client = Some(Client::with_config(cfg));
                    }
                    ["subscribe", topic] => {
                        if let Some(c) = client.as_mut() {
                            c.subscribe(topic);
                        }
                    }
                    ["reconnect"] => {
                        if let Some(c) = client.as_mut() {
                            c.reconnect_now();
                        }
                    }
                    ["close"] => {
                        if let Some(c) = client.as_mut() {
                            c.close();
                            while let Some(ev) = c.poll(Duration::ZERO) {
                                writeln!(out, "{}", line(&ev)).ok();
                            }
                        }
                        client = None;
                        writeln!(out, "closed").ok();
                    }
                    ["swarm", n, addr] => {
                        let n: usize = n.parse().unwrap_or(0);
                        let mut clients: Vec<Client> =
                            (0..n).map(|_| Client::connect(addr, "")).collect();
                        let mut delays = Vec::with_capacity(n);
                        for c in clients.iter_mut() {
                            loop {
                                if let Some(Event::Disconnected { retry_in_ms, .. }) =
                                    c.poll(Duration::from_millis(50))
                                {
                                    delays.push(retry_in_ms.unwrap_or(0).to_string());
                                    break;
                                }
                            }
                        }
                        writeln!(out, "delays {}", delays.join(" ")).ok();
                    }
                    ["exit"] => return,
                    _ => {
                        writeln!(out, "unknown {cmd}").ok();
                    }
                }
                out.flush().ok();
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        match client.as_mut() {
            Some(c) => {
                if let Some(ev) = c.poll(Duration::from_millis(5)) {
                    writeln!(out, "{}", line(&ev)).ok();
                    out.flush().ok();
                }
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
