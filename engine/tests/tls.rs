//! TLS on the engine's port over real sockets: a rustls client subscribes and receives; wss
//! (tungstenite over rustls) too; a client that trusts another certificate refuses the
//! handshake; the certificate is reloaded while clients receive, none dropped, and new
//! handshakes get the new certificate; plain TCP still works beside TLS, and not with
//! --require-tls.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use yorker_engine::proto::tls::TlsSettings;
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);

/// A self-signed certificate for "localhost" written to `dir/<name>.{crt,key}`; its DER.
fn cert(dir: &std::path::Path, name: &str) -> CertificateDer<'static> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), c.cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), c.key_pair.serialize_pem()).unwrap();
    c.cert.der().clone()
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "yorker-tls-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn client_config(trust: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(T))?;
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now, so that a refused certificate shows here.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A yorker session over a TLS stream.
struct TlsClient {
    s: Tls,
    dec: Decoder,
}

impl TlsClient {
    fn open(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, topic: &str) -> TlsClient {
        let mut c = TlsClient {
            s: tls_connect(addr, cfg).expect("TLS handshake"),
            dec: Decoder::new(MAX_MAX_FRAME),
        };
        c.send(&Frame::Hello(Hello {
            version: 2,
            role: Role::Subscriber,
            client_name: "tls".into(),
            token: String::new(),
        }));
        assert!(matches!(c.next(), Frame::Welcome(_)));
        c.send(&Frame::Subscribe(Subscribe {
            request_id: 1,
            entries: vec![SubscribeEntry {
                topic: topic.into(),
                resume: None,
                conflate: false,
                presence: false,
            }],
        }));
        assert!(matches!(c.next(), Frame::SubAck(_)));
        c
    }

    fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).unwrap();
        self.s.flush().unwrap();
    }

    fn next(&mut self) -> Frame {
        let mut b = [0u8; 16384];
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                if matches!(f, Frame::Heartbeat) {
                    continue;
                }
                return f;
            }
            let n = self.s.read(&mut b).expect("read");
            assert!(n > 0, "closed");
            self.dec.feed(&b[..n]);
        }
    }
}

fn server(d: &std::path::Path, require: bool) -> yorker_engine::Server {
    let mut cfg = config(1);
    cfg.core.tls = Some(Arc::new(
        TlsSettings::new(d.join("a.crt"), d.join("a.key")).unwrap(),
    ));
    cfg.core.require_tls = require;
    start(cfg)
}

#[test]
fn tls_and_wss_clients_receive_and_a_wrong_certificate_is_refused() {
    let d = dir();
    let a = cert(&d, "a");
    let other = cert(&d, "other");
    let s = server(&d, false);
    let addr = s.local_addr();
    let mut c = TlsClient::open(addr, client_config(&a), "m/1");
    let mut plain = Client::connect(addr, Role::Subscriber);
    plain.subscribe("m/1", false);
    let mut publisher = Client::connect(addr, Role::Publisher);
    for i in 1..=50u8 {
        publisher.publish("m/1", 0, &vec![i; 1 + 300 * (i as usize % 3)]);
    }
    for want in 1..=50 {
        match c.next() {
            Frame::Update(u) => assert_eq!(u.seq, want),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plain.next_update(T).unwrap().seq,
            want,
            "plain TCP beside TLS"
        );
    }
    // wss: WebSocket inside TLS.
    let tls = tls_connect(addr, client_config(&a)).unwrap();
    let (mut ws, resp) =
        tungstenite::client(format!("wss://localhost:{}/", addr.port()), tls).unwrap();
    assert_eq!(resp.status(), 101);
    let hello = Frame::Hello(Hello {
        version: 2,
        role: Role::Subscriber,
        client_name: "wss".into(),
        token: String::new(),
    });
    ws.send(tungstenite::Message::Binary(hello.to_bytes().unwrap()))
        .unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Binary(b) => assert_eq!(b[4], frame_type::WELCOME),
        other => panic!("{other:?}"),
    }
    // A client that trusts another certificate refuses the server's.
    let e = tls_connect(addr, client_config(&other))
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // The session above is unaffected.
    c.send(&Frame::Ping { nonce: 9 });
    assert_eq!(c.next(), Frame::Pong { nonce: 9 });
}

#[test]
fn certificate_reload_keeps_connections_and_serves_the_new_one() {
    let d = dir();
    let a = cert(&d, "a");
    let s = server(&d, false);
    let addr = s.local_addr();
    let mut clients: Vec<TlsClient> = (0..20)
        .map(|_| TlsClient::open(addr, client_config(&a), "m/2"))
        .collect();
    let mut publisher = Client::connect(addr, Role::Publisher);
    publisher.publish("m/2", 0, b"before");
    // Rotate: new files, reload (as SIGHUP does).
    let b = cert(&d, "b");
    std::fs::copy(d.join("b.crt"), d.join("a.crt")).unwrap();
    std::fs::copy(d.join("b.key"), d.join("a.key")).unwrap();
    s.reload_tls().expect("reload");
    publisher.publish("m/2", 0, b"after");
    for c in clients.iter_mut() {
        for want in [1, 2] {
            match c.next() {
                Frame::Update(u) => assert_eq!(u.seq, want, "no connection dropped by the reload"),
                other => panic!("{other:?}"),
            }
        }
    }
    // New handshakes get the new certificate; a client pinned to the old one refuses.
    assert!(tls_connect(addr, client_config(&b)).is_ok());
    assert!(tls_connect(addr, client_config(&a)).is_err());
}

#[test]
fn require_tls_closes_plain_connections() {
    let d = dir();
    let a = cert(&d, "a");
    let s = server(&d, true);
    let addr = s.local_addr();
    let mut plain = Client::raw(addr);
    assert!(plain.hello(Role::Subscriber, T).is_err());
    let mut c = TlsClient::open(addr, client_config(&a), "m/3");
    c.send(&Frame::Ping { nonce: 1 });
    assert_eq!(c.next(), Frame::Pong { nonce: 1 });
}
