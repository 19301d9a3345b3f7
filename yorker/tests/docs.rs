//! docs/OPERATIONS.md must document every flag of `yorker serve` and `yorker relay`, and their
//! environment variables.

use std::process::Command;

#[test]
fn operations_doc_lists_every_flag_and_env_var() {
    check("serve");
}

#[test]
fn operations_doc_lists_every_relay_flag() {
    check("relay");
}

fn check(command: &str) {
    let help = Command::new(env!("CARGO_BIN_EXE_yorker"))
        .args([command, "--help"])
        .output()
        .expect("yorker serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/OPERATIONS.md"
    ))
    .unwrap();
    let mut flags = 0;
    for word in help.split_whitespace() {
        let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
        let w = w.split('=').next().unwrap_or(w);
        if w.starts_with("--") && w.len() > 2 && w != "--help" {
            flags += 1;
            assert!(
                doc.contains(&format!("`{w}`")),
                "docs/OPERATIONS.md does not document {w} of `yorker {command}`"
            );
        }
        if w.starts_with("YORKER_") {
            assert!(
                doc.contains(&format!("`{w}`")),
                "docs/OPERATIONS.md does not document {w}"
            );
        }
    }
    assert!(flags >= 20, "parsed only {flags} flags from --help");
}
