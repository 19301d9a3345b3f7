//! TLS on the same listener (rustls, sans-IO): a connection whose first byte is a TLS handshake
//! record (0x16) is a TLS connection when the server has a certificate. Its plaintext is the
//! same byte stream as a TCP connection's (raw yorker frames, or a WebSocket: wss). Encryption
//! is per connection by nature: at send time the connection's queued frames (the shared
//! `Bytes`, never re-encoded) are written into its rustls session and the resulting records go
//! out as one buffer. The certificate is re-read by [`TlsSettings::reload`] (SIGHUP) without
//! touching open connections.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConnection;

use super::{Now, Shard};

/// Where the certificate comes from, and the rustls configuration built on it.
#[derive(Debug)]
pub struct TlsSettings {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    /// The kernel offers kernel TLS (`tls` in /proc/sys/net/ipv4/tcp_available_ulp).
    pub ktls_available: bool,
}

#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<Arc<CertifiedKey>, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("--tls-key {}: {e}", key.display()))?
    .ok_or_else(|| format!("--tls-key {}: no private key in it", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("--tls-cert and --tls-key do not match: {e}"))?;
    Ok(Arc::new(ck))
}

impl TlsSettings {
    /// Reads the certificate chain and key (PEM) and builds the configuration: TLS 1.2 and
    /// 1.3, ALPN `yorker` and `http/1.1` (browsers' wss).
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<TlsSettings, String> {
        let ck = load(&cert, &key)?;
        let resolver = Arc::new(Resolver(RwLock::new(ck)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"yorker".to_vec(), b"http/1.1".to_vec()];
        let ktls_available = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .map(|s| s.split_whitespace().any(|u| u == "tls"))
            .unwrap_or(false);
        Ok(TlsSettings {
            cert,
            key,
            resolver,
            config: Arc::new(config),
            ktls_available,
        })
    }

    /// Re-reads the certificate and key; new handshakes use them, open connections keep theirs.
    /// On an error the old certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load(&self.cert, &self.key)?;
        *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = ck;
        Ok(())
    }
}

/// A TLS connection's session.
#[derive(Debug)]
pub(crate) struct TlsConn {
    conn: ServerConnection,
}

/// True when the first bytes of a connection are a TLS handshake record.
pub(crate) fn looks_like_tls(data: &[u8]) -> bool {
    data.first() == Some(&0x16)
}

impl Shard {
    /// Bytes arrived: decrypted first when the connection is (or starts as) TLS.
    pub(crate) fn on_wire_bytes(&mut self, slot: u32, data: &[u8], now: Now) {
        let fresh = self.conn(slot).is_some_and(|c| {
            c.phase == super::slot::Phase::AwaitHello
                && c.pending.is_none()
                && !self.ws.contains_key(&slot)
                && !self.tls.contains_key(&slot)
        });
        if fresh && looks_like_tls(data) {
            if let Some(t) = self.cfg.tls.clone() {
                match ServerConnection::new(t.config.clone()) {
                    Ok(conn) => {
                        self.tls.insert(slot, TlsConn { conn });
                    }
                    Err(_) => return self.abort(slot),
                }
            }
        } else if fresh && self.cfg.require_tls {
            // Plain TCP or WebSocket where only TLS is allowed.
            self.stats.tls_refused += 1;
            return self.abort(slot);
        }
        let Some(t) = self.tls.get_mut(&slot) else {
            return self.on_transport_bytes(slot, data, now);
        };
        let mut input = data;
        let mut plain = Vec::new();
        let mut failed = false;
        while !input.is_empty() {
            match t.conn.read_tls(&mut input) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            if let Err(e) = t.conn.process_new_packets() {
                tracing::debug!(slot, error = %e, "tls session failed");
                failed = true;
                break;
            }
            let mut buf = [0u8; 16 * 1024];
            loop {
                match t.conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                    Err(_) => break, // WouldBlock: no more plaintext now
                }
            }
        }
        let wants_write = t.conn.wants_write();
        if failed {
            self.stats.tls_refused += 1;
            // The alert rustls queued goes out with the close.
            let alert = self.tls_drain_records(slot);
            if alert.is_empty() {
                return self.abort(slot);
            }
            return self.finish_with(slot, alert, now);
        }
        if !plain.is_empty() {
            self.on_transport_bytes(slot, &plain, now);
        }
        if wants_write {
            self.mark_ready_tls(slot);
        }
    }

    /// The records rustls has ready (handshake, alerts), taken out.
    fn tls_drain_records(&mut self, slot: u32) -> Bytes {
        let Some(t) = self.tls.get_mut(&slot) else {
            return Bytes::new();
        };
        let mut out = Vec::new();
        while t.conn.wants_write() {
            if t.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        Bytes::from(out)
    }

    /// True when `slot`'s TLS session has records to send.
    pub(crate) fn tls_wants_write(&self, slot: u32) -> bool {
        self.tls.get(&slot).is_some_and(|t| t.conn.wants_write())
    }

    /// Puts a TLS connection in the ready list for its session's records (even with an empty
    /// outbox).
    fn mark_ready_tls(&mut self, slot: u32) {
        if let Some(c) = self.conn_mut(slot) {
            if !c.sending && !c.in_ready {
                c.in_ready = true;
                self.ready.push_front(slot);
            }
        }
    }

    /// Encrypts `entries` (plaintext: yorker frames behind their WebSocket headers when the
    /// connection is wss) into `slot`'s session and returns the records to send.
    pub(crate) fn tls_seal(&mut self, slot: u32, plain: &mut Vec<Bytes>) -> Bytes {
        let Some(t) = self.tls.get_mut(&slot) else {
            return Bytes::new();
        };
        for p in plain.drain(..) {
            // rustls buffers what it cannot encrypt yet (during the handshake) itself.
            let _ = t.conn.writer().write_all(&p);
        }
        let mut out = Vec::new();
        while t.conn.wants_write() {
            if t.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        Bytes::from(out)
    }

    /// Ends the connection with these bytes (a TLS alert) as its last.
    fn finish_with(&mut self, slot: u32, b: Bytes, now: Now) {
        // The alert is already a record: sent as it is, never encrypted again.
        self.tls.remove(&slot);
        self.finish_raw(slot, b, now);
    }

    /// Forgets a connection's TLS session (it ended).
    pub(crate) fn forget_tls(&mut self, slot: u32) {
        self.tls.remove(&slot);
    }
}
