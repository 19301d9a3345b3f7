//! The WebSocket transport over real sockets: an independent client (tungstenite) subscribes
//! and receives one yorker frame per binary message; handshake edge cases are answered with the
//! right HTTP status; fragmented client frames work; protocol errors close with the right code;
//! a raw TCP canary on the same core is unaffected throughout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tungstenite::Message;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

fn ws_connect(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/"), s).expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads the next binary message: exactly one yorker frame.
fn next_frame(ws: &mut tungstenite::WebSocket<TcpStream>) -> Frame {
    loop {
        match ws.read().expect("a message") {
            Message::Binary(b) => {
                let mut d = Decoder::new(MAX_MAX_FRAME);
                d.feed(&b);
                let f = d.next_frame().unwrap().expect("a whole frame per message");
                assert_eq!(d.buffered(), 0, "one frame per message");
                return f;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

fn send(ws: &mut tungstenite::WebSocket<TcpStream>, f: &Frame) {
    ws.send(Message::Binary(f.to_bytes().unwrap())).unwrap();
}

/// Raw HTTP request; the status line's code and the whole response head.
fn raw_handshake(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    // The head is enough (a 101 keeps the connection open).
    let mut resp = Vec::new();
    let mut b = [0u8; 1024];
    while !resp.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => resp.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&resp).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn request(extra: &str, version: &str, key: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
    )
}

const KEY16: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[test]
fn websocket_clients_subscribe_and_get_one_frame_per_message() {
    let s = start(config(1));
    let addr = s.local_addr();
    let mut canary = Client::connect(addr, Role::Subscriber);
    canary.subscribe("m/1", false);
    let mut publisher = Client::connect(addr, Role::Publisher);
    publisher.publish("m/1", 0, b"first");

    let mut ws = ws_connect(addr);
    send(
        &mut ws,
        &Frame::Hello(Hello {
            version: 2,
            role: Role::Subscriber,
            client_name: "browser".into(),
            token: String::new(),
        }),
    );
    assert!(matches!(next_frame(&mut ws), Frame::Welcome(_)));
    send(
        &mut ws,
        &Frame::Subscribe(Subscribe {
            request_id: 1,
            entries: vec![SubscribeEntry {
                topic: "m/1".into(),
                resume: None,
                conflate: false,
                presence: false,
            }],
        }),
    );
    assert!(matches!(next_frame(&mut ws), Frame::SubAck(_)));
    match next_frame(&mut ws) {
        Frame::Update(u) => assert_eq!((u.seq, &u.payload[..]), (1, &b"first"[..])),
        other => panic!("{other:?}"),
    }
    // Live updates, large and small: one binary message each, in order.
    for i in 2..=30u64 {
        let size = if i % 10 == 0 { 70_000 / 2 } else { i as usize };
        publisher.publish("m/1", 0, &vec![i as u8; size.min(60_000)]);
    }
    for i in 2..=30u64 {
        match next_frame(&mut ws) {
            Frame::Update(u) => assert_eq!(u.seq, i),
            other => panic!("{other:?}"),
        }
    }
    // yorker PING inside the stream, WebSocket ping at the transport.
    send(&mut ws, &Frame::Ping { nonce: 42 });
    assert_eq!(next_frame(&mut ws), Frame::Pong { nonce: 42 });
    ws.send(Message::Ping(Bytes::from_static(b"hb"))).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hb");
                break;
            }
            Message::Binary(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    // A clean close is answered with a close.
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    for want in 1..=30 {
        assert_eq!(canary.next_update(T).unwrap().seq, want, "the TCP canary");
    }
}

#[test]
fn handshake_edge_cases_get_http_answers() {
    let mut cfg = config(1);
    cfg.core.ws_origins = vec!["https://game.example".into()];
    let s = start(cfg);
    let addr = s.local_addr();
    let origin = "Origin: https://game.example\r\n";
    let (code, _) = raw_handshake(addr, &request(origin, "13", "short"));
    assert_eq!(code, 400, "a key that is not 16 bytes");
    let (code, head) = raw_handshake(addr, &request(origin, "8", KEY16));
    assert_eq!(code, 426, "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    let (code, _) = raw_handshake(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: x\r\n{origin}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY16}\r\n\r\n"),
    );
    assert_eq!(code, 400, "no Upgrade header");
    let (code, _) = raw_handshake(
        addr,
        &request("Origin: https://evil.example\r\n", "13", KEY16),
    );
    assert_eq!(code, 403, "origin not allowed");
    let (code, head) = raw_handshake(addr, &request(origin, "13", KEY16));
    assert_eq!(code, 101, "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A handshake that never ends: refused once it passes the size limit.
    let mut s2 = TcpStream::connect(addr).unwrap();
    s2.set_read_timeout(Some(T)).unwrap();
    s2.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let filler = format!("X-Filler: {}\r\n", "a".repeat(100));
    for _ in 0..100 {
        if s2.write_all(filler.as_bytes()).is_err() {
            break;
        }
    }
    let mut resp = Vec::new();
    let _ = s2.read_to_end(&mut resp);
    assert!(
        String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    // An upgrade that never completes is closed at the handshake timeout, without a yorker
    // frame (the client speaks HTTP).
    let mut cfg = config(1);
    cfg.core.handshake_timeout_ms = 200;
    let quick = start(cfg);
    let mut s3 = TcpStream::connect(quick.local_addr()).unwrap();
    s3.set_read_timeout(Some(T)).unwrap();
    s3.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = s3.read_to_end(&mut resp);
    assert!(resp.is_empty(), "{resp:?}");
    // Raw TCP on the same listener is unaffected.
    let mut c = Client::connect(addr, Role::Subscriber);
    assert_eq!(c.subscribe("x", true).result, SubResult::Ok);
}

/// A masked client frame.
fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    yorker_wire::websocket::masked_frame(fin, op, payload, [0x12, 0x34, 0x56, 0x78])
}

fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request("", "13", KEY16).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

/// Reads server frames (unmasked) until a close; returns its code.
fn close_code(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        // Parse what is there: headers of at most 10 bytes, unmasked.
        let mut at = 0;
        while buf.len() >= at + 2 {
            let op = buf[at] & 0x0f;
            let (len, hl) = match buf[at + 1] & 0x7f {
                126 if buf.len() >= at + 4 => {
                    (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
                }
                127 if buf.len() >= at + 10 => (
                    u64::from_be_bytes(buf[at + 2..at + 10].try_into().unwrap()) as usize,
                    10,
                ),
                l if l < 126 => (l as usize, 2),
                _ => break,
            };
            if buf.len() < at + hl + len {
                break;
            }
            if op == 0x8 {
                return u16::from_be_bytes([buf[at + hl], buf[at + hl + 1]]);
            }
            at += hl + len;
        }
        let n = s.read(&mut b).expect("read");
        assert!(n > 0, "closed without a close frame");
        buf.extend_from_slice(&b[..n]);
    }
}

#[test]
fn fragmented_frames_work_and_protocol_errors_close() {
    let s = start(config(1));
    let addr = s.local_addr();
    // HELLO split over a fragmented message, with a ping in between: WELCOME comes back.
    let hello = Frame::Hello(Hello {
        version: 1,
        role: Role::Subscriber,
        client_name: "frag".into(),
        token: String::new(),
    })
    .to_bytes()
    .unwrap();
    let mut c = upgraded(addr);
    let mut bytes = masked(false, 0x2, &hello[..5]);
    bytes.extend(masked(true, 0x9, b"p"));
    bytes.extend(masked(true, 0x0, &hello[5..]));
    for chunk in bytes.chunks(3) {
        c.write_all(chunk).unwrap();
    }
    // Two server messages, in either order: the pong and WELCOME (one binary message).
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while got.len() < 3 + 2 + 39 {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    let (first, second) = if got[0] == 0x8a {
        (&got[..3], &got[3..])
    } else {
        (&got[41..], &got[..41])
    };
    assert_eq!(first, &[0x8a, 1, b'p'], "the pong: {got:?}");
    assert_eq!(
        &second[..2],
        &[0x82, 39],
        "WELCOME in one binary message: {got:?}"
    );
    assert_eq!(second[2 + 4], 0x81, "{got:?}");
    // An unmasked frame: close 1002. A text message: close 1003.
    let mut c = upgraded(addr);
    let mut unmasked = masked(true, 0x2, &hello);
    unmasked[1] &= 0x7f;
    unmasked.truncate(2);
    unmasked.extend_from_slice(&hello);
    c.write_all(&unmasked).unwrap();
    assert_eq!(close_code(&mut c), 1002);
    let mut c = upgraded(addr);
    c.write_all(&masked(true, 0x1, b"hello")).unwrap();
    assert_eq!(close_code(&mut c), 1003);
    // A yorker error inside: the ERROR frame, then a close.
    let mut c = upgraded(addr);
    c.write_all(&masked(
        true,
        0x2,
        &Frame::Ping { nonce: 1 }.to_bytes().unwrap(),
    ))
    .unwrap();
    assert_eq!(close_code(&mut c), 1000);
}
