//! `yorker-sim token`: mints a signed token (JWT) for testing a server started with
//! `--jwt-key`. Production tokens come from the game's own auth service; this is the same
//! format (docs/PROTOCOL.md §2.6).

use std::path::{Path, PathBuf};

use clap::Args;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// Flags of `yorker-sim token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Signing key: a PEM private key (Ed25519: EdDSA, P-256: ES256, RSA: RS256), or an HS256
    /// secret file (at least 32 bytes).
    #[arg(long)]
    pub key: PathBuf,
    /// Key id to put in the header (the server's `--jwt-key KID=PATH`).
    #[arg(long)]
    pub kid: Option<String>,
    /// Subject (the user): owns user/<sub> topics.
    #[arg(long)]
    pub sub: Option<String>,
    /// Seconds until expiry.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Role: subscriber, publisher or relay.
    #[arg(long, default_value = "subscriber")]
    pub role: String,
    /// Topic patterns the token may subscribe to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Topic patterns the token may publish to (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
}

/// A signing key read from a file.
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads `path` (PEM private key or HS256 secret).
    pub fn from_file(path: &Path, kid: Option<String>) -> Result<Signer, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("--key {}: {e}", path.display()))?;
        let (alg, key) = if bytes.starts_with(b"-----BEGIN") {
            if let Ok(k) = EncodingKey::from_ed_pem(&bytes) {
                (Algorithm::EdDSA, k)
            } else if let Ok(k) = EncodingKey::from_ec_pem(&bytes) {
                (Algorithm::ES256, k)
            } else if let Ok(k) = EncodingKey::from_rsa_pem(&bytes) {
                (Algorithm::RS256, k)
            } else {
                return Err(format!(
                    "--key {}: not an Ed25519, P-256 or RSA private key",
                    path.display()
                ));
            }
        } else {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            (Algorithm::HS256, EncodingKey::from_secret(secret))
        };
        Ok(Signer { alg, key, kid })
    }

    /// A token with these claims.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let mut h = Header::new(self.alg);
        h.kid = self.kid.clone();
        encode(&h, claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Claims for a token of `ttl` seconds.
pub fn claims(
    sub: Option<&str>,
    ttl: u64,
    role: &str,
    subscribe: &[String],
    publish: &[String],
) -> serde_json::Value {
    let mut c = serde_json::json!({
        "exp": jsonwebtoken::get_current_timestamp() + ttl,
        "role": role,
    });
    if let Some(s) = sub {
        c["sub"] = s.into();
    }
    if !subscribe.is_empty() {
        c["subscribe"] = subscribe.into();
    }
    if !publish.is_empty() {
        c["publish"] = publish.into();
    }
    c
}

/// Prints one token.
pub fn run(a: &TokenArgs) -> Result<i32, String> {
    let signer = Signer::from_file(&a.key, a.kid.clone())?;
    let c = claims(a.sub.as_deref(), a.ttl, &a.role, &a.subscribe, &a.publish);
    println!("{}", signer.sign(&c)?);
    Ok(0)
}
