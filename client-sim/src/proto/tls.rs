//! TLS for the load generator: the handshake runs blocking when the connection is dialled
//! (before the socket goes to the ring); afterwards received records are decrypted into the
//! parser of what the session carries (yorker, NATS, or a WebSocket around either), and what
//! the client sends is sealed by its session.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use super::{Event, ParseError};

/// A client configuration trusting the certificates in `ca` (PEM).
pub fn client_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let f = std::fs::File::open(ca).map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(f)) {
        roots
            .add(c.map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?)
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Runs the TLS handshake on a connected, blocking socket.
pub fn handshake(
    cfg: &Arc<rustls::ClientConfig>,
    sock: &mut (impl Read + Write),
) -> std::io::Result<ClientConnection> {
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    Ok(conn)
}

/// A TLS connection's session and the parser of what it carries.
#[derive(Debug)]
pub struct Parser {
    conn: ClientConnection,
    /// The parser of the decrypted stream.
    pub(crate) inner: super::Parser,
    plain: Vec<u8>,
}

impl Parser {
    /// Wraps an established session carrying what `inner` parses.
    pub fn with(conn: ClientConnection, inner: super::Parser) -> Parser {
        Parser {
            conn,
            inner,
            plain: vec![0u8; 64 * 1024],
        }
    }

    /// `plain` encrypted for sending.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let _ = self.conn.writer().write_all(plain);
        let mut out = Vec::new();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        out
    }

    /// Feeds received records, calling `on` for every message of the inner protocol.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ParseError> {
        while !data.is_empty() {
            self.conn
                .read_tls(&mut data)
                .map_err(|e| ParseError(e.to_string()))?;
            self.conn
                .process_new_packets()
                .map_err(|e| ParseError(e.to_string()))?;
            loop {
                match self.conn.reader().read(&mut self.plain) {
                    Ok(0) => break,
                    Ok(n) => {
                        let chunk = self.plain[..n].to_vec();
                        self.inner.feed(&chunk, on)?;
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }
}
