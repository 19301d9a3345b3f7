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
    let lib = profile_dir().join("libyorker_c.a");
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
    // The docs' example too.
    let follow = out.with_extension("follow");
    let status = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&follow)
        .arg(repo().join("sdk/c/examples/follow.c"))
        .arg("-I")
        .arg(repo().join("sdk/c/include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .expect("cc");
    assert!(status.success(), "sdk/c/examples/follow.c does not compile");
    run_suite("c", || Driver::start("c", Command::new(&out)));
}

#[test]
fn csharp_sdk_conforms() {
    let out =
        std::env::temp_dir().join(format!("yorker-conformance-cs-{}.exe", std::process::id()));
    let mut sources: Vec<PathBuf> = Vec::new();
    for dir in ["sdk/csharp/Runtime", "sdk/csharp/Conformance"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cs") {
                sources.push(p);
            }
        }
    }
    // mcs speaks up to C# 7.2: the SDK stays within what Unity's C# 7.3 accepts.
    let status = Command::new("mcs")
        .args(["-langversion:7.2", "-warnaserror", "-nologo"])
        .arg(format!("-out:{}", out.display()))
        .args(&sources)
        .status()
        .expect("mcs (Debian package mono-devel; scripts/install-test-deps.sh installs it)");
    assert!(status.success(), "the C# SDK does not compile");
    // The sample of the Unity package compiles against it too.
    let status = Command::new("mcs")
        .args(["-langversion:7.2", "-warnaserror", "-nologo"])
        .arg(format!(
            "-out:{}",
            out.with_extension("follow.exe").display()
        ))
        .arg(repo().join("sdk/csharp/Runtime/YorkerClient.cs"))
        .arg(repo().join("sdk/csharp/Samples~/Follow.cs"))
        .status()
        .expect("mcs");
    assert!(
        status.success(),
        "sdk/csharp/Samples~/Follow.cs does not compile"
    );
    run_suite("csharp", || {
        let mut c = Command::new("mono");
        c.arg(&out);
        Driver::start("csharp", c)
    });
}

#[test]
fn typescript_sdk_conforms_over_websocket() {
    let dir = yorker_conformance::build_typescript();
    run_suite("typescript", || {
        let mut c = Command::new("node");
        c.arg(dir.join("test/conformance-driver.mjs"));
        Driver::start("typescript", c)
    });
}
