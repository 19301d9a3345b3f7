//! WebSocket (RFC 6455) for yorker, sans-IO: the server side of the opening handshake, a
//! streaming decoder of client frames (masked; unmasked into the yorker byte stream they
//! carry), and the header of server frames (unmasked, so one header serves every subscriber of
//! an update: it depends only on the frame's length).
//!
//! Each yorker frame a server sends travels in one binary WebSocket message. A client may
//! split its yorker byte stream across binary messages and frames any way it likes: the
//! decoder only concatenates binary payloads (docs/PROTOCOL.md §6).

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455's key GUID.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The opening handshake must fit this many bytes.
pub const MAX_HANDSHAKE: usize = 8192;
/// The subprotocol a client may ask for (`Sec-WebSocket-Protocol: yorker`); echoed if offered.
pub const SUBPROTOCOL: &str = "yorker";

/// Opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text message (refused: yorker is binary).
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close codes sent.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Protocol error (unmasked frame, reserved bits, bad opcode, bad control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data this endpoint cannot accept (a text message).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A message too big.
    pub const TOO_BIG: u16 = 1009;
}

/// A client's opening handshake, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes the request took (what follows is WebSocket frames).
    pub len: usize,
    /// The request target (`/`, `/ws`, ...).
    pub path: String,
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// `Origin`, if sent (browsers always send it).
    pub origin: Option<String>,
    /// The client offered the `yorker` subprotocol.
    pub yorker_protocol: bool,
}

/// Why a handshake was refused: the HTTP status to answer with, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
#[non_exhaustive]
pub struct HandshakeError {
    /// 400 (malformed, missing headers), 426 (not version 13), 431 (too large), 403 (origin).
    pub status: u16,
    /// For the log and the response body.
    pub reason: &'static str,
}

impl HandshakeError {
    /// A refusal with `status` (for checks the caller adds, such as the origin: 403).
    pub fn new(status: u16, reason: &'static str) -> HandshakeError {
        HandshakeError { status, reason }
    }
}

fn refuse(status: u16, reason: &'static str) -> HandshakeError {
    HandshakeError { status, reason }
}

/// True when `buf` (the first bytes of a connection) starts like an HTTP request rather than a
/// yorker frame (whose first byte, the top of a length below 16 MiB, is 0).
pub fn looks_like_http(buf: &[u8]) -> bool {
    buf.first().is_some_and(|&b| b == b'G')
}

/// Parses the opening handshake at the start of `buf`: `Ok(None)` until it is complete.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HandshakeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HANDSHAKE {
            return Err(refuse(431, "request header too large"));
        }
        return Ok(None);
    };
    if end + 4 > MAX_HANDSHAKE {
        return Err(refuse(431, "request header too large"));
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| refuse(400, "request is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    if method != Some("GET") || parts.next().is_some() {
        return Err(refuse(400, "expected GET"));
    }
    if version != Some("HTTP/1.1") {
        return Err(refuse(400, "expected HTTP/1.1"));
    }
    let path = path.unwrap_or("/").to_string();
    let (mut host, mut upgrade, mut connection) = (false, false, false);
    let (mut version13, mut version_seen) = (false, false);
    let (mut key, mut origin, mut yorker_protocol) = (None, None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, "malformed header line"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => host = true,
            "upgrade" => {
                upgrade = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
            }
            "connection" => {
                connection = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-version" => {
                version_seen = true;
                version13 = value == "13";
            }
            "sec-websocket-key" => key = Some(value.to_string()),
            "origin" => origin = Some(value.to_string()),
            "sec-websocket-protocol" => {
                yorker_protocol |= value.split(',').any(|p| p.trim() == SUBPROTOCOL)
            }
            _ => {}
        }
    }
    if !host {
        return Err(refuse(400, "missing Host"));
    }
    if !upgrade || !connection {
        return Err(refuse(
            400,
            "not a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if !version_seen || !version13 {
        return Err(refuse(426, "Sec-WebSocket-Version must be 13"));
    }
    let key = key.ok_or_else(|| refuse(400, "missing Sec-WebSocket-Key"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .map_err(|_| refuse(400, "Sec-WebSocket-Key is not base64"))?;
    if decoded.len() != 16 {
        return Err(refuse(400, "Sec-WebSocket-Key must be 16 bytes"));
    }
    Ok(Some(Request {
        len: end + 4,
        path,
        key,
        origin,
        yorker_protocol,
    }))
}

/// `Sec-WebSocket-Accept` for `key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The 101 answer to `req`.
pub fn accept_response(req: &Request) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(&req.key)
    );
    if req.yorker_protocol {
        r.push_str("Sec-WebSocket-Protocol: yorker\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// The HTTP answer to a refused handshake (the connection closes after it).
pub fn refusal_response(e: &HandshakeError) -> Vec<u8> {
    let text = match e.status {
        403 => "Forbidden",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let extra = if e.status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {text}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        e.status,
        e.reason.len(),
        e.reason
    )
    .into_bytes()
}

/// The header of an unmasked server frame carrying `len` payload bytes (`fin` set).
pub fn frame_header(op: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | op;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A complete masked frame, as a client sends it (`fin` clear for all but a message's last).
pub fn masked_frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (h, n) = frame_header(op, payload.len());
    let mut f = Vec::with_capacity(n + 4 + payload.len());
    f.extend_from_slice(&h[..n]);
    if !fin {
        f[0] &= 0x7f;
    }
    f[1] |= 0x80;
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A complete control frame from the server (`payload` at most 125 bytes).
pub fn control_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let (h, n) = frame_header(op, payload.len());
    let mut f = h[..n].to_vec();
    f.extend_from_slice(payload);
    f
}

/// A close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    control_frame(opcode::CLOSE, &p)
}

/// What a client's frames asked for besides data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Answer with a pong carrying these bytes.
    Ping(Vec<u8>),
    /// The client closes (code 1005 when it sent none): answer with a close and close.
    Close(u16),
}

/// A client frame broke the protocol: close with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("websocket: {reason} (close {code})")]
#[non_exhaustive]
pub struct FrameError {
    /// The close code to send.
    pub code: u16,
    /// Why.
    pub reason: &'static str,
}

fn bad(code: u16, reason: &'static str) -> FrameError {
    FrameError { code, reason }
}

/// Streaming decoder of client frames.
#[derive(Debug, Default, Clone)]
pub struct FrameDecoder {
    /// Bytes of a frame header not complete yet (at most 14).
    head: Vec<u8>,
    /// The frame being read: opcode, bytes left, mask, position in the mask.
    cur: Option<Cur>,
    /// Inside a fragmented binary message.
    in_message: bool,
    /// A control frame's payload being gathered.
    control: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Cur {
    op: u8,
    left: u64,
    mask: [u8; 4],
    at: usize,
}

impl FrameDecoder {
    /// Bytes held in partial headers and control payloads (bounded: at most 14 + 125).
    pub fn buffered(&self) -> usize {
        self.head.len() + self.control.len()
    }

    /// Feeds bytes from the client: binary payload is appended to `data` (unmasked); pings
    /// and closes go to `controls`. An error means: send a close with its code, then close.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        data: &mut Vec<u8>,
        controls: &mut Vec<Control>,
    ) -> Result<(), FrameError> {
        while !input.is_empty() {
            let Some(cur) = self.cur.as_mut() else {
                // Gather a header: 2 bytes, then its extended length and mask.
                let need = |h: &[u8]| -> usize {
                    if h.len() < 2 {
                        return 2;
                    }
                    let ext = match h[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    2 + ext + if h[1] & 0x80 != 0 { 4 } else { 0 }
                };
                while self.head.len() < need(&self.head) && !input.is_empty() {
                    self.head.push(input[0]);
                    input = &input[1..];
                }
                if self.head.len() < need(&self.head) {
                    return Ok(());
                }
                self.start_frame(controls)?;
                continue;
            };
            let n = (cur.left.min(input.len() as u64)) as usize;
            let (chunk, rest) = input.split_at(n);
            input = rest;
            let start = if cur.op < 0x8 {
                data.len()
            } else {
                self.control.len()
            };
            let target = if cur.op < 0x8 {
                &mut *data
            } else {
                &mut self.control
            };
            target.extend_from_slice(chunk);
            for (i, b) in target[start..].iter_mut().enumerate() {
                *b ^= cur.mask[(cur.at + i) % 4];
            }
            cur.at = (cur.at + n) % 4;
            cur.left -= n as u64;
            if cur.left == 0 {
                self.end_frame(controls)?;
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, controls: &mut Vec<Control>) -> Result<(), FrameError> {
        let h = std::mem::take(&mut self.head);
        let (b0, b1) = (h[0], h[1]);
        if b0 & 0x70 != 0 {
            return Err(bad(close_code::PROTOCOL_ERROR, "reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(bad(
                close_code::PROTOCOL_ERROR,
                "client frames must be masked",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0f;
        let (len, at) = match b1 & 0x7f {
            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
            127 => {
                let l = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
                if l >> 63 != 0 {
                    return Err(bad(
                        close_code::PROTOCOL_ERROR,
                        "payload length out of range",
                    ));
                }
                (l, 10)
            }
            l => (l as u64, 2),
        };
        let mask: [u8; 4] = h[at..at + 4].try_into().expect("4 bytes");
        match op {
            opcode::BINARY if self.in_message => {
                return Err(bad(
                    close_code::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                ))
            }
            opcode::CONTINUATION if !self.in_message => {
                return Err(bad(
                    close_code::PROTOCOL_ERROR,
                    "continuation without a message",
                ))
            }
            opcode::BINARY | opcode::CONTINUATION => self.in_message = !fin,
            opcode::TEXT => {
                return Err(bad(
                    close_code::UNSUPPORTED_DATA,
                    "text messages are not yorker frames",
                ))
            }
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin || len > 125 {
                    return Err(bad(
                        close_code::PROTOCOL_ERROR,
                        "control frame fragmented or over 125 bytes",
                    ));
                }
            }
            _ => return Err(bad(close_code::PROTOCOL_ERROR, "unknown opcode")),
        }
        self.cur = Some(Cur {
            op,
            left: len,
            mask,
            at: 0,
        });
        if len == 0 {
            // An empty frame ends at once (an empty ping or close still counts).
            self.end_frame(controls)?;
        }
        Ok(())
    }

    fn end_frame(&mut self, controls: &mut Vec<Control>) -> Result<(), FrameError> {
        let cur = self.cur.take().expect("a frame");
        match cur.op {
            opcode::PING => controls.push(Control::Ping(std::mem::take(&mut self.control))),
            opcode::PONG => self.control.clear(),
            opcode::CLOSE => {
                let p = std::mem::take(&mut self.control);
                if p.len() == 1 {
                    return Err(bad(close_code::PROTOCOL_ERROR, "close payload of 1 byte"));
                }
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                controls.push(Control::Close(code));
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::masked_frame as client_frame;

    #[test]
    fn rfc_6455_accept_key() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_edge_cases() {
        let ok = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://game.example\r\nSec-WebSocket-Protocol: chat, yorker\r\n\r\nrest";
        let r = parse_request(ok).unwrap().unwrap();
        assert_eq!(r.len, ok.len() - 4);
        assert_eq!(r.origin.as_deref(), Some("https://game.example"));
        assert!(r.yorker_protocol);
        let resp = String::from_utf8(accept_response(&r)).unwrap();
        assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(resp.contains("Sec-WebSocket-Protocol: yorker"));
        assert_eq!(parse_request(&ok[..40]), Ok(None));
        let variant = |from: &str, to: &str| {
            let s = String::from_utf8(ok.to_vec()).unwrap().replace(from, to);
            parse_request(s.as_bytes()).map(|_| ()).unwrap_err().status
        };
        assert_eq!(variant("Version: 13", "Version: 8"), 426);
        assert_eq!(variant("Upgrade: websocket", "Upgrade: h2c"), 400);
        assert_eq!(variant("Upgrade\r\nSec", "close\r\nSec"), 400);
        assert_eq!(variant("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400);
        assert_eq!(variant("dGhlIHNhbXBsZSBub25jZQ==", "!!!"), 400);
        assert_eq!(variant("GET /ws", "POST /ws"), 400);
        assert_eq!(variant("Host: x\r\n", ""), 400);
        let huge = vec![b'G'; MAX_HANDSHAKE + 1];
        assert_eq!(parse_request(&huge).unwrap_err().status, 431);
        assert!(
            String::from_utf8(refusal_response(&HandshakeError::new(426, "x")))
                .unwrap()
                .contains("Sec-WebSocket-Version: 13")
        );
        assert!(looks_like_http(b"GET /") && !looks_like_http(&[0, 0, 0, 10, 1]));
    }

    #[test]
    fn frames_split_anywhere_are_unmasked_and_joined() {
        let mut stream = client_frame(false, opcode::BINARY, b"hello ", [1, 2, 3, 4]);
        stream.extend(client_frame(true, opcode::PING, b"p", [9, 9, 9, 9]));
        stream.extend(client_frame(
            true,
            opcode::CONTINUATION,
            &[7u8; 300],
            [5, 6, 7, 8],
        ));
        stream.extend(client_frame(true, opcode::BINARY, &[], [0, 0, 0, 1]));
        stream.extend(client_frame(
            true,
            opcode::CLOSE,
            &1000u16.to_be_bytes(),
            [3, 3, 3, 3],
        ));
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let mut d = FrameDecoder::default();
            let (mut data, mut ctl) = (Vec::new(), Vec::new());
            for chunk in stream.chunks(step) {
                d.feed(chunk, &mut data, &mut ctl).unwrap();
            }
            let mut want = b"hello ".to_vec();
            want.extend([7u8; 300]);
            assert_eq!(data, want, "split every {step}");
            assert_eq!(ctl, [Control::Ping(b"p".to_vec()), Control::Close(1000)]);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn protocol_errors_have_close_codes() {
        let run = |bytes: Vec<u8>| {
            let mut d = FrameDecoder::default();
            d.feed(&bytes, &mut Vec::new(), &mut Vec::new())
                .map(|_| ())
                .unwrap_err()
                .code
        };
        let mut unmasked = client_frame(true, opcode::BINARY, b"x", [1, 1, 1, 1]);
        unmasked[1] &= 0x7f;
        assert_eq!(run(unmasked), close_code::PROTOCOL_ERROR);
        assert_eq!(
            run(client_frame(true, opcode::TEXT, b"x", [1, 1, 1, 1])),
            close_code::UNSUPPORTED_DATA
        );
        assert_eq!(
            run(client_frame(true, opcode::CONTINUATION, b"x", [1, 1, 1, 1])),
            close_code::PROTOCOL_ERROR
        );
        assert_eq!(
            run(client_frame(false, opcode::PING, b"x", [1, 1, 1, 1])),
            close_code::PROTOCOL_ERROR
        );
        assert_eq!(
            run(client_frame(true, opcode::PING, &[0u8; 126], [1, 1, 1, 1])),
            close_code::PROTOCOL_ERROR
        );
        assert_eq!(
            run(client_frame(true, 0x3, b"x", [1, 1, 1, 1])),
            close_code::PROTOCOL_ERROR
        );
        let mut rsv = client_frame(true, opcode::BINARY, b"x", [1, 1, 1, 1]);
        rsv[0] |= 0x40;
        assert_eq!(run(rsv), close_code::PROTOCOL_ERROR);
        let mut two = client_frame(false, opcode::BINARY, b"x", [1, 1, 1, 1]);
        two.extend(client_frame(true, opcode::BINARY, b"y", [1, 1, 1, 1]));
        assert_eq!(run(two), close_code::PROTOCOL_ERROR);
        let mut huge = vec![0x82, 0xff];
        huge.extend(u64::MAX.to_be_bytes());
        huge.extend([0, 0, 0, 0]);
        assert_eq!(run(huge), close_code::PROTOCOL_ERROR);
    }

    #[test]
    fn server_headers() {
        assert_eq!(&frame_header(opcode::BINARY, 5).0[..2], &[0x82, 5]);
        assert_eq!(
            &frame_header(opcode::BINARY, 300).0[..4],
            &[0x82, 126, 1, 44]
        );
        let (h, n) = frame_header(opcode::BINARY, 70_000);
        assert_eq!((n, h[1]), (10, 127));
        assert_eq!(
            close_frame(1002, "bad"),
            [0x88, 5, 0x03, 0xea, b'b', b'a', b'd']
        );
    }
}
