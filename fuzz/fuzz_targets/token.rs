//! Arbitrary strings as tokens (against an HS256 key) and as topic patterns: refused or
//! accepted, never a panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use yorker_engine::proto::auth::{Pattern, TokenVerifier};

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let path = std::env::temp_dir().join("yorker-fuzz-hs.key");
        std::fs::write(&path, [7u8; 32]).expect("key file");
        TokenVerifier::new(
            vec![format!("{}", path.display()).parse().expect("spec")],
            None,
            None,
        )
        .expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = verifier().verify(s);
    if let Ok(p) = Pattern::parse(s) {
        let _ = p.matches("match/1/score");
    }
});
