//! Who may do what: signed tokens (JWT), topic patterns, and the private `user/` namespace.
//!
//! A session is anonymous, authenticated by a shared key (publisher or relay key), or carries a
//! [`Grant`] from a verified token. Tokens are checked with keys read from files
//! ([`TokenVerifier`]); a shard caches what it verified ([`TokenCache`]), so a reconnect storm
//! of clients holding the same tokens costs one hash per HELLO, not one signature check.
//! docs/PROTOCOL.md §2.6 is the contract.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use yorker_wire::Role;

/// The first segment of every per-user topic: `user/<subject>` and below are private to the
/// sessions whose token has that subject.
pub const USER_PREFIX: &str = "user";

/// True for topics under `user/`, which only their user may subscribe to.
pub fn is_private(topic: &str) -> bool {
    topic.split('/').next() == Some(USER_PREFIX)
}

/// One segment of a [`Pattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// This exact segment.
    Lit(Box<str>),
    /// `*`: any one segment.
    One,
    /// `**` (last only): zero or more further segments.
    Rest,
}

/// A topic pattern: `/`-separated segments where `*` matches one segment and a final `**`
/// matches any number of further segments (none included): `match/*/score`, `room/42/**`, `**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Seg>);

impl Pattern {
    /// Parses a pattern; `{sub}` must have been substituted already (see [`Grant`]).
    pub fn parse(p: &str) -> Result<Pattern, String> {
        if p.is_empty() {
            return Err("empty topic pattern".into());
        }
        let parts: Vec<&str> = p.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segs.push(match *part {
                "*" => Seg::One,
                "**" if i == parts.len() - 1 => Seg::Rest,
                "**" => return Err(format!("{p:?}: `**` may only be the last segment")),
                lit => {
                    yorker_wire::topic::validate(lit)
                        .map_err(|e| format!("{p:?}: segment {lit:?}: {e}"))?;
                    if lit.contains('/') {
                        unreachable!("split on '/'");
                    }
                    Seg::Lit(lit.into())
                }
            });
        }
        Ok(Pattern(segs))
    }

    /// True when `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for seg in &self.0 {
            match seg {
                Seg::Rest => return true,
                Seg::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Seg::Lit(l) => {
                    if parts.next() != Some(l) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// True when the pattern names `user/...` topics explicitly (its first segment is the
    /// literal `user`): only such patterns can grant other users' private topics.
    fn names_private(&self) -> bool {
        matches!(self.0.first(), Some(Seg::Lit(l)) if &**l == USER_PREFIX)
    }
}

/// Parses a comma-free list of patterns (flags, claims).
pub fn parse_patterns(ps: &[String]) -> Result<Vec<Pattern>, String> {
    ps.iter().map(|p| Pattern::parse(p)).collect()
}

/// What a verified token allows one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`: its user. Owns `user/<sub>` and everything below it.
    pub subject: Option<Box<str>>,
    /// The role the token grants: `subscriber`, `publisher` (which may also subscribe) or
    /// `relay`.
    pub role: Role,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at_s: u64,
    /// `subscribe` patterns; `None`: the server's rules for anonymous sessions.
    subscribe: Option<Vec<Pattern>>,
    /// `publish` patterns; `None`: every topic (publisher tokens only).
    publish: Option<Vec<Pattern>>,
}

impl Grant {
    /// True when the grant lets a session say HELLO with `role`.
    pub fn permits_role(&self, role: Role) -> bool {
        self.role == role || (self.role == Role::Publisher && role == Role::Subscriber)
    }

    /// May a subscriber session with this grant POST to `topic` (a room)? Only where the
    /// token's `publish` patterns say.
    pub fn may_post(&self, topic: &str) -> bool {
        self.publish
            .as_ref()
            .is_some_and(|ps| ps.iter().any(|p| p.matches(topic)))
    }

    /// True when the subject owns `topic` (`user/<sub>` or below).
    fn owns(&self, topic: &str) -> bool {
        let Some(sub) = &self.subject else {
            return false;
        };
        let mut parts = topic.split('/');
        parts.next() == Some(USER_PREFIX) && parts.next() == Some(sub)
    }
}

/// The server's rules for sessions without a token.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Topics anonymous subscribers (and tokens without a `subscribe` claim) may subscribe to;
    /// `user/...` topics never match for them.
    pub anonymous_topics: Vec<Pattern>,
    /// Refuse subscribers without a token.
    pub require_token: bool,
    /// After a token expires the session lives this many ms more, waiting for AUTH.
    pub grace_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            anonymous_topics: vec![Pattern(vec![Seg::Rest])],
            require_token: false,
            grace_ms: 30_000,
        }
    }
}

impl Policy {
    /// May a session with `grant` (none: anonymous or key-authenticated) subscribe to `topic`?
    pub fn may_subscribe(&self, grant: Option<&Grant>, topic: &str) -> bool {
        let private = is_private(topic);
        match grant {
            None => !private && self.anonymous_topics.iter().any(|p| p.matches(topic)),
            Some(g) if g.owns(topic) => true,
            Some(g) => match &g.subscribe {
                Some(ps) => ps
                    .iter()
                    .any(|p| p.matches(topic) && (!private || p.names_private())),
                None => !private && self.anonymous_topics.iter().any(|p| p.matches(topic)),
            },
        }
    }

    /// May a publisher session with `grant` (none: it presented the publisher key) publish to
    /// `topic`?
    pub fn may_publish(grant: Option<&Grant>, topic: &str) -> bool {
        match grant {
            None => true,
            Some(g) => match &g.publish {
                Some(ps) => ps.iter().any(|p| p.matches(topic)),
                None => g.role == Role::Publisher,
            },
        }
    }
}

/// Why a token was refused (the message of ERROR `auth_failed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No key verifies it (wrong key, tampered token, unknown `kid`, algorithm not allowed).
    #[error("token signature not valid for any configured key")]
    BadSignature,
    /// Its `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Malformed, or claims that break the rules (missing `exp`, bad pattern, unknown role,
    /// wrong audience or issuer).
    #[error("token refused: {0}")]
    Invalid(String),
}

/// The claims yorker reads. Unknown claims are ignored.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

impl Claims {
    /// The grant, with `{sub}` substituted in every pattern (a pattern with `{sub}` is dropped
    /// when the token has no subject).
    fn grant(self) -> Result<Grant, TokenError> {
        let role = match self.role.as_deref() {
            None | Some("subscriber") => Role::Subscriber,
            Some("publisher") => Role::Publisher,
            Some("relay") => Role::Relay,
            Some("backend") => Role::Backend,
            Some(other) => return Err(TokenError::Invalid(format!("unknown role {other:?}"))),
        };
        if let Some(s) = &self.sub {
            if s.is_empty() || s.len() > 200 {
                return Err(TokenError::Invalid("sub must be 1 to 200 bytes".into()));
            }
        }
        let sub = self.sub.as_deref();
        let patterns = |ps: Option<Vec<String>>| -> Result<Option<Vec<Pattern>>, TokenError> {
            let Some(ps) = ps else { return Ok(None) };
            if ps.len() > 64 {
                return Err(TokenError::Invalid("more than 64 patterns".into()));
            }
            let mut out = Vec::with_capacity(ps.len());
            for p in ps {
                if p.contains("{sub}") {
                    let Some(s) = sub else { continue };
                    out.push(Pattern::parse(&p.replace("{sub}", s)).map_err(TokenError::Invalid)?);
                } else {
                    out.push(Pattern::parse(&p).map_err(TokenError::Invalid)?);
                }
            }
            Ok(Some(out))
        };
        Ok(Grant {
            role,
            expires_at_s: self.exp,
            subscribe: patterns(self.subscribe)?,
            publish: patterns(self.publish)?,
            subject: self.sub.map(Into::into),
        })
    }
}

/// Where a verification key comes from: `[KID=]PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Key id tokens name in their header (`kid`); default: the file name without extension.
    pub kid: String,
    /// The file: a PEM public key (Ed25519 for EdDSA, P-256 for ES256, RSA for RS256), or any
    /// other content as an HS256 secret (one trailing newline is dropped).
    pub path: PathBuf,
}

impl std::str::FromStr for KeySpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kid, path) = match s.split_once('=') {
            Some((k, p)) if !k.is_empty() && !k.contains('/') => (k.to_string(), PathBuf::from(p)),
            _ => {
                let path = PathBuf::from(s);
                let kid = path
                    .file_stem()
                    .map(|f| f.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("--jwt-key {s:?}: no file name"))?;
                (kid, path)
            }
        };
        Ok(KeySpec { kid, path })
    }
}

struct Key {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Reads one key file.
fn load_key(spec: &KeySpec) -> Result<Key, String> {
    let bytes =
        std::fs::read(&spec.path).map_err(|e| format!("--jwt-key {}: {e}", spec.path.display()))?;
    let is_pem = bytes.starts_with(b"-----BEGIN");
    let (alg, key) = if is_pem {
        if let Ok(k) = DecodingKey::from_ed_pem(&bytes) {
            (Algorithm::EdDSA, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(&bytes) {
            (Algorithm::ES256, k)
        } else if let Ok(k) = DecodingKey::from_rsa_pem(&bytes) {
            (Algorithm::RS256, k)
        } else {
            return Err(format!(
                "--jwt-key {}: a PEM file, but not an Ed25519, P-256 or RSA public key",
                spec.path.display()
            ));
        }
    } else {
        let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        if secret.len() < 32 {
            return Err(format!(
                "--jwt-key {}: an HS256 secret must be at least 32 bytes",
                spec.path.display()
            ));
        }
        (Algorithm::HS256, DecodingKey::from_secret(secret))
    };
    Ok(Key {
        kid: spec.kid.clone(),
        alg,
        key,
    })
}

/// The keys that verify tokens, and the claims rules. Shared by every shard; [`reload`]
/// re-reads the files (SIGHUP), so keys rotate without a restart: add the new key, let tokens
/// signed with the old one expire, then remove it.
///
/// [`reload`]: TokenVerifier::reload
#[derive(Debug)]
pub struct TokenVerifier {
    specs: Vec<KeySpec>,
    audience: Option<String>,
    issuer: Option<String>,
    keys: RwLock<Arc<Vec<Key>>>,
    /// Bumped by every reload: cached verifications of older generations are void.
    generation: AtomicU64,
}

impl TokenVerifier {
    /// Reads every key file; fails with one clear line per problem.
    pub fn new(
        specs: Vec<KeySpec>,
        audience: Option<String>,
        issuer: Option<String>,
    ) -> Result<Self, String> {
        let keys = Self::load(&specs)?;
        Ok(TokenVerifier {
            specs,
            audience,
            issuer,
            keys: RwLock::new(Arc::new(keys)),
            generation: AtomicU64::new(1),
        })
    }

    fn load(specs: &[KeySpec]) -> Result<Vec<Key>, String> {
        if specs.is_empty() {
            return Err("no --jwt-key given".into());
        }
        let keys = specs.iter().map(load_key).collect::<Result<Vec<_>, _>>()?;
        let mut kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        kids.sort_unstable();
        if let Some(w) = kids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("--jwt-key: key id {:?} given twice", w[0]));
        }
        Ok(keys)
    }

    /// Re-reads the key files. On error the keys in use stay. Returns the number of keys.
    pub fn reload(&self) -> Result<usize, String> {
        let keys = Self::load(&self.specs)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    /// The current key generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Checks the token's signature (with the key its `kid` names, or every key of its
    /// algorithm), `exp` (required), `nbf`, and the audience and issuer when configured.
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed token: {e}")))?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut candidates = keys
            .iter()
            .filter(|k| k.alg == header.alg && header.kid.as_ref().is_none_or(|kid| *kid == k.kid));
        for k in &mut candidates {
            let mut v = Validation::new(k.alg);
            v.leeway = 0;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            match &self.audience {
                Some(a) => v.set_audience(&[a]),
                None => v.validate_aud = false,
            }
            if let Some(i) = &self.issuer {
                v.set_issuer(&[i]);
            }
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => return data.claims.grant(),
                Err(e) => {
                    // The signature is checked first: any other error means this key signed
                    // it, and the claims are what is wrong.
                    use jsonwebtoken::errors::ErrorKind as K;
                    match e.kind() {
                        K::InvalidSignature => continue,
                        K::ExpiredSignature => return Err(TokenError::Expired),
                        other => return Err(TokenError::Invalid(format!("{other:?}"))),
                    }
                }
            }
        }
        Err(TokenError::BadSignature)
    }
}

/// A shard's cache of verified tokens: SHA-256 of the token -> its grant. Bounded: when full it
/// starts over. Entries of an older key generation are ignored.
#[derive(Debug, Default)]
pub struct TokenCache {
    map: HashMap<[u8; 32], (u64, Arc<Grant>)>,
    /// Verifications done (signature checks), and answers from the cache.
    pub verified: u64,
    /// Answers from the cache.
    pub hits: u64,
}

/// Entries a shard's token cache holds at most.
const CACHE_CAP: usize = 8192;

impl TokenCache {
    /// The grant for `token`, verified once per key generation. The expiry is checked on every
    /// call, cached or not.
    pub fn grant(
        &mut self,
        v: &TokenVerifier,
        token: &str,
        now_s: u64,
    ) -> Result<Arc<Grant>, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = v.generation();
        if let Some((g, grant)) = self.map.get(&digest) {
            if *g == generation {
                if grant.expires_at_s <= now_s {
                    return Err(TokenError::Expired);
                }
                self.hits += 1;
                return Ok(grant.clone());
            }
        }
        self.verified += 1;
        let grant = Arc::new(v.verify(token)?);
        if self.map.len() >= CACHE_CAP {
            self.map.clear();
        }
        self.map.insert(digest, (generation, grant.clone()));
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn pats(ps: &[&str]) -> Vec<Pattern> {
        ps.iter().map(|p| Pattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn patterns_match_by_segment() {
        let m = |p: &str, t: &str| Pattern::parse(p).unwrap().matches(t);
        assert!(m("**", "a") && m("**", "a/b/c"));
        assert!(m("match/*", "match/42") && !m("match/*", "match/42/score"));
        assert!(!m("match/*", "match"));
        assert!(m("match/*/score", "match/1/score") && !m("match/*/score", "match/1/odds"));
        assert!(m("room/42/**", "room/42") && m("room/42/**", "room/42/chat/x"));
        assert!(!m("room/42/**", "room/420") && !m("room/42", "room/42/chat"));
        assert!(Pattern::parse("a/**/b").is_err());
        assert!(Pattern::parse("a//b").is_err() && Pattern::parse("").is_err());
        assert!(Pattern::parse("a b").is_err());
    }

    fn grant(sub: Option<&str>, subscribe: Option<&[&str]>, role: Role) -> Grant {
        Grant {
            subject: sub.map(Into::into),
            role,
            expires_at_s: u64::MAX,
            subscribe: subscribe.map(pats),
            publish: None,
        }
    }

    #[test]
    fn private_topics_belong_to_their_user() {
        let p = Policy::default();
        assert!(p.may_subscribe(None, "match/1"));
        assert!(!p.may_subscribe(None, "user/alice"));
        let alice = grant(Some("alice"), None, Role::Subscriber);
        assert!(p.may_subscribe(Some(&alice), "user/alice"));
        assert!(p.may_subscribe(Some(&alice), "user/alice/bets"));
        assert!(!p.may_subscribe(Some(&alice), "user/bob"));
        assert!(!p.may_subscribe(Some(&alice), "user/alicex"));
        // `**` does not reach into user/; only a pattern naming user/ explicitly does.
        let wide = grant(Some("alice"), Some(&["**"]), Role::Subscriber);
        assert!(!p.may_subscribe(Some(&wide), "user/bob"));
        let support = grant(Some("ops"), Some(&["user/*"]), Role::Subscriber);
        assert!(p.may_subscribe(Some(&support), "user/bob"));
        // A token's patterns replace the anonymous rules.
        let rooms = grant(Some("a"), Some(&["room/7/**"]), Role::Subscriber);
        assert!(p.may_subscribe(Some(&rooms), "room/7/chat"));
        assert!(!p.may_subscribe(Some(&rooms), "match/1"));
        let closed = Policy {
            anonymous_topics: pats(&["match/**"]),
            ..Policy::default()
        };
        assert!(closed.may_subscribe(None, "match/1") && !closed.may_subscribe(None, "room/1"));
    }

    fn secret_file(dir: &std::path::Path, name: &str, secret: &[u8]) -> KeySpec {
        let path = dir.join(name);
        std::fs::write(&path, secret).unwrap();
        format!("{}", path.display()).parse().unwrap()
    }

    fn sign(secret: &[u8], kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(Into::into);
        encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn tokens_are_verified_with_rotating_keys() {
        let dir = std::env::temp_dir().join(format!("yorker-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = [1u8; 32];
        let new = [2u8; 40];
        let specs = vec![
            secret_file(&dir, "old.key", &old),
            secret_file(&dir, "new.key", &new),
        ];
        let v = TokenVerifier::new(specs, None, None).unwrap();
        let claims = serde_json::json!({
            "sub": "alice", "exp": now() + 600,
            "subscribe": ["room/{sub}/**", "match/*"], "publish": ["room/{sub}/chat"]
        });
        // Either key verifies; by kid, or by trying each HS256 key.
        let g = v.verify(&sign(&old, Some("old"), claims.clone())).unwrap();
        assert_eq!(g.subject.as_deref(), Some("alice"));
        assert!(Policy::default().may_subscribe(Some(&g), "room/alice/x"));
        assert!(Policy::may_publish(Some(&g), "room/alice/chat"));
        assert!(!Policy::may_publish(Some(&g), "room/bob/chat"));
        assert!(v.verify(&sign(&new, None, claims.clone())).is_ok());
        // A kid that names the other key fails.
        assert_eq!(
            v.verify(&sign(&new, Some("old"), claims.clone())),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            v.verify(&sign(&[9u8; 32], None, claims.clone())),
            Err(TokenError::BadSignature)
        );
        let expired = serde_json::json!({"sub": "a", "exp": now() - 1});
        assert_eq!(
            v.verify(&sign(&old, None, expired)),
            Err(TokenError::Expired)
        );
        let no_exp = serde_json::json!({"sub": "a"});
        assert!(matches!(
            v.verify(&sign(&old, None, no_exp)),
            Err(TokenError::Invalid(_))
        ));
        let bad_role = serde_json::json!({"exp": now() + 60, "role": "admin"});
        assert!(matches!(
            v.verify(&sign(&old, None, bad_role)),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            v.verify("not a token"),
            Err(TokenError::Invalid(_))
        ));
        // Rotation: drop the old key file's content; a reload makes its tokens fail.
        let t_old = sign(&old, None, claims.clone());
        let mut cache = TokenCache::default();
        assert!(cache.grant(&v, &t_old, now()).is_ok());
        assert!(cache.grant(&v, &t_old, now()).is_ok());
        assert_eq!((cache.verified, cache.hits), (1, 1));
        std::fs::write(dir.join("old.key"), [3u8; 32]).unwrap();
        assert_eq!(v.reload(), Ok(2));
        assert_eq!(
            cache.grant(&v, &t_old, now()),
            Err(TokenError::BadSignature)
        );
        // A cached grant still expires.
        let short = sign(&new, None, serde_json::json!({"exp": now() + 5}));
        assert!(cache.grant(&v, &short, now()).is_ok());
        assert_eq!(
            cache.grant(&v, &short, now() + 10),
            Err(TokenError::Expired)
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn short_secrets_and_duplicate_kids_are_refused() {
        let dir = std::env::temp_dir().join(format!("yorker-auth-k-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = secret_file(&dir, "s.key", b"tooshort");
        assert!(TokenVerifier::new(vec![short], None, None)
            .unwrap_err()
            .contains("at least 32"));
        let a = secret_file(&dir, "a.key", &[1; 32]);
        let mut b = secret_file(&dir, "b.key", &[2; 32]);
        b.kid = "a".into();
        assert!(TokenVerifier::new(vec![a, b], None, None)
            .unwrap_err()
            .contains("twice"));
        assert_eq!(
            "k1=/x/y.pem".parse::<KeySpec>().unwrap(),
            KeySpec {
                kid: "k1".into(),
                path: "/x/y.pem".into()
            }
        );
        assert_eq!("/x/y.pem".parse::<KeySpec>().unwrap().kid, "y");
        std::fs::remove_dir_all(&dir).ok();
    }
}
