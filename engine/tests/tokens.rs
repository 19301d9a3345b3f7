//! Signed tokens (JWT) over real sockets: roles, topic permissions, per-user topics, expiry
//! with grace, refresh in-session (AUTH), key types.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use yorker_engine::proto::auth::{KeySpec, Policy, TokenVerifier};
use yorker_wire::*;

const T: Duration = Duration::from_secs(10);
const HS_SECRET: [u8; 32] = [42; 32];
const ED_SEED: [u8; 32] = [7; 32];

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "yorker-tokens-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// An HS256 secret file ("hs") and an Ed25519 public key file ("ed") in `d`.
fn key_files(d: &Path) -> Vec<KeySpec> {
    std::fs::write(d.join("hs.key"), HS_SECRET).unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&ED_SEED)
        .verifying_key()
        .to_bytes();
    let mut spki = hex("302a300506032b6570032100");
    spki.extend_from_slice(&public);
    std::fs::write(d.join("ed.pem"), pem("PUBLIC KEY", &spki)).unwrap();
    ["hs.key", "ed.pem"]
        .iter()
        .map(|f| format!("{}", d.join(f).display()).parse().unwrap())
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&HS_SECRET),
    )
    .unwrap()
}

fn ed(claims: serde_json::Value) -> String {
    let mut pkcs8 = hex("302e020100300506032b657004220420");
    pkcs8.extend_from_slice(&ED_SEED);
    let key = EncodingKey::from_ed_pem(pem("PRIVATE KEY", &pkcs8).as_bytes()).unwrap();
    encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
}

fn server(grace_ms: u64, require_token: bool) -> yorker_engine::Server {
    let mut cfg = config(1);
    cfg.core.tokens = Some(Arc::new(
        TokenVerifier::new(key_files(&dir()), None, None).unwrap(),
    ));
    cfg.core.policy = Policy {
        grace_ms,
        require_token,
        ..Policy::default()
    };
    start(cfg)
}

fn results(c: &mut Client, topics: &[&str]) -> Vec<SubResult> {
    c.subscribe_with(
        topics
            .iter()
            .map(|t| SubscribeEntry {
                topic: t.to_string(),
                resume: None,
                conflate: true,
                presence: false,
            })
            .collect(),
    )
    .entries
    .iter()
    .map(|e| e.result)
    .collect()
}

#[test]
fn tokens_grant_per_user_topics_and_patterns() {
    let s = server(30_000, false);
    let addr = s.local_addr();
    let exp = now() + 600;
    // HS256 and EdDSA tokens; `{sub}` in patterns becomes the subject.
    for token in [
        hs(
            serde_json::json!({"sub": "alice", "exp": exp, "subscribe": ["room/{sub}/**", "match/*"]}),
        ),
        ed(
            serde_json::json!({"sub": "alice", "exp": exp, "subscribe": ["room/{sub}/**", "match/*"]}),
        ),
    ] {
        let mut c = connect_with_token(addr, Role::Subscriber, token);
        assert_eq!(
            results(
                &mut c,
                &[
                    "user/alice",
                    "user/alice/bets",
                    "user/bob",
                    "room/alice/x",
                    "room/bob",
                    "match/1",
                    "news"
                ]
            ),
            vec![
                SubResult::Ok,
                SubResult::Ok,
                SubResult::Forbidden,
                SubResult::Ok,
                SubResult::Forbidden,
                SubResult::Ok,
                SubResult::Forbidden
            ]
        );
    }
    // A publisher token limited to some topics; a private update reaches its user only.
    let mut p = connect_with_token(
        addr,
        Role::Publisher,
        hs(
            serde_json::json!({"sub": "bets-service", "exp": exp, "role": "publisher", "publish": ["user/*", "user/*/**"]}),
        ),
    );
    let mut alice = connect_with_token(
        addr,
        Role::Subscriber,
        hs(serde_json::json!({"sub": "alice", "exp": exp})),
    );
    assert_eq!(results(&mut alice, &["user/alice"]), vec![SubResult::Ok]);
    p.publish("user/alice", 0, b"bet settled: +12.50");
    assert_eq!(
        &alice.next_update(T).unwrap().payload[..],
        b"bet settled: +12.50"
    );
    p.publish("match/1", 0, b"not mine to publish");
    p.expect_error(ErrorCode::NotPublisher);
    // Anonymous sessions still work for public topics, and never reach user/ topics.
    let mut anon = Client::connect(addr, Role::Subscriber);
    assert_eq!(
        results(&mut anon, &["match/1", "user/alice"]),
        vec![SubResult::Ok, SubResult::Forbidden]
    );
}

#[test]
fn bad_tokens_are_refused_with_a_reason() {
    let s = server(30_000, true);
    let addr = s.local_addr();
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "x", "exp": now() + 60}),
        &EncodingKey::from_secret(&[1; 32]),
    )
    .unwrap();
    assert!(refused(addr, 2, Role::Subscriber, wrong_key).contains("signature"));
    let expired = hs(serde_json::json!({"sub": "x", "exp": now() - 5}));
    assert!(refused(addr, 2, Role::Subscriber, expired).contains("expired"));
    let no_exp = hs(serde_json::json!({"sub": "x"}));
    assert!(refused(addr, 2, Role::Subscriber, no_exp).contains("refused"));
    assert!(refused(addr, 1, Role::Subscriber, String::new()).contains("requires a token"));
    // A subscriber token does not make a publisher.
    let sub = hs(serde_json::json!({"sub": "x", "exp": now() + 60}));
    assert!(refused(addr, 2, Role::Publisher, sub).contains("role"));
    // The publisher key still works.
    let _p = Client::connect(addr, Role::Publisher);
}

#[test]
fn an_expired_session_is_closed_after_its_grace_unless_refreshed() {
    let s = server(300, false);
    let addr = s.local_addr();
    let mut canary = Client::connect(addr, Role::Subscriber);
    canary.subscribe("canary", false);
    let mut p = Client::connect(addr, Role::Publisher);
    // Expires within two seconds; nothing refreshes it.
    let mut late = connect_with_token(
        addr,
        Role::Subscriber,
        hs(serde_json::json!({"sub": "bob", "exp": now() + 2})),
    );
    late.subscribe("user/bob", true);
    // Expires as soon, but refreshed in time with a longer token (same subject).
    let mut fresh = connect_with_token(
        addr,
        Role::Subscriber,
        hs(
            serde_json::json!({"sub": "carol", "exp": now() + 2, "subscribe": ["match/*", "odds/*"]}),
        ),
    );
    assert_eq!(
        results(&mut fresh, &["match/1", "odds/1"]),
        vec![SubResult::Ok, SubResult::Ok]
    );
    fresh.send(&Frame::Auth {
        token: hs(
            serde_json::json!({"sub": "carol", "exp": now() + 600, "subscribe": ["match/*"]}),
        ),
    });
    // odds/1 is no longer allowed: it ends, reported with request id 0.
    match fresh.next(T) {
        Some(Frame::SubAck(a)) => {
            assert_eq!(a.request_id, 0);
            assert_eq!(a.entries.len(), 1);
            assert_eq!(a.entries[0].result, SubResult::Forbidden);
        }
        other => panic!("expected the revocation SUBACK, got {other:?}"),
    }
    match fresh.next(T) {
        Some(Frame::AuthOk { expires_at_s, .. }) => assert!(expires_at_s > now() + 500),
        other => panic!("expected AUTH_OK, got {other:?}"),
    }
    late.expect_error(ErrorCode::TokenExpired);
    assert!(late.closed_within(T));
    // The refreshed session outlived its first token, and still receives.
    p.publish("match/1", 0, b"after");
    assert_eq!(&fresh.next_update(T).unwrap().payload[..], b"after");
    p.publish("canary", 0, b"alive");
    assert_eq!(&canary.next_update(T).unwrap().payload[..], b"alive");
    // A refresh may not change the subject.
    fresh.send(&Frame::Auth {
        token: hs(serde_json::json!({"sub": "mallory", "exp": now() + 600})),
    });
    fresh.expect_error(ErrorCode::AuthFailed);
}

#[test]
fn auth_needs_version_2() {
    let s = server(30_000, false);
    let mut c = Client::connect(s.local_addr(), Role::Subscriber);
    c.send(&Frame::Auth {
        token: hs(serde_json::json!({"sub": "x", "exp": now() + 60})),
    });
    c.expect_error(ErrorCode::UnexpectedFrame);
}
