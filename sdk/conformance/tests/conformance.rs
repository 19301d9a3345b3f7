//! The conformance suite, once per SDK: Rust (the crate's driver binary), C (the C example
//! compiled here against the static library), C# (compiled with mono's mcs, run with mono).

use std::path::PathBuf;
use std::process::Command;

use yorker_conformance::{run_suite, Driver};

/// target/<profile>, from this test's own path (target/<profile>/deps/<test>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn rust_sdk_conforms() {
    run_suite("rust", || {
        Driver::start(
            "rust",
            Command::new(env!("CARGO_BIN_EXE_yorker-conformance-rust")),
        )
    });
}

#[test]
fn c_sdk_conforms() {
    let lib = profile_dir().join("libyorker_client.a");
    assert!(
        lib.exists(),
        "{} missing: build it first with `cargo build -p yorker-client-c` (scripts/test.sh does)",
        lib.display()
    );
    let out = std::env::temp_dir().join(format!("yorker-conformance-c-{}", std::process::id()));
    let status = Command::new("cc")
        .args([
            "-std=c99",
            "-D_POSIX_C_SOURCE=200809L",
            "-Wall",
            "-Werror",
            "-o",
        ])
        .arg(&out)
        .arg(repo().join("sdk/c/examples/conformance.c"))
        .arg("-I")
        .arg(repo().join("sdk/c/include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .expect("cc (the C compiler)");
    assert!(status.success(), "the C example does not compile");
    run_suite("c", || Driver::start("c", Command::new(&out)));
}
