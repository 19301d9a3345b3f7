//! include/yorker.h is what cbindgen generates from src/lib.rs (regenerate with
//! `YORKER_UPDATE_HEADER=1 cargo test -p yorker-client-c --test header`).

#[test]
fn the_header_is_generated_by_cbindgen_and_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let cfg = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(cfg)
        .generate()
        .expect("cbindgen generates")
        .write(&mut out);
    let path = format!("{dir}/include/yorker.h");
    if std::env::var_os("YORKER_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &out).unwrap();
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == out,
        "include/yorker.h is stale: YORKER_UPDATE_HEADER=1 cargo test -p yorker-client-c --test header"
    );
}
