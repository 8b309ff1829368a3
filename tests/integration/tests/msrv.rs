//! Item 13 of issue 8: the minimum supported Rust version is stated once, in the workspace's
//! `rust-version`, inherited by every crate, and the same version is what clippy checks API use
//! against (clippy.toml `msrv`) and what scripts/test.sh builds with.

use std::path::{Path, PathBuf};
use toml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_toml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse::<Value>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn workspace_rust_version() -> String {
    let ws = read_toml(&root().join("Cargo.toml"));
    ws["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("[workspace.package] rust-version")
        .to_string()
}

#[test]
fn every_crate_inherits_the_workspace_rust_version() {
    let ws = read_toml(&root().join("Cargo.toml"));
    let members = ws["workspace"]["members"].as_array().expect("members");
    assert!(!members.is_empty());
    for m in members {
        let m = m.as_str().expect("member path");
        let manifest = read_toml(&root().join(m).join("Cargo.toml"));
        let rv = &manifest["package"].get("rust-version");
        let inherited = rv
            .and_then(|v| v.get("workspace"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        assert!(
            inherited,
            "{m}/Cargo.toml must declare `rust-version.workspace = true` (found {rv:?})"
        );
    }
}

#[test]
fn clippy_and_the_test_script_use_the_same_version() {
    let version = workspace_rust_version();
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| p.parse().expect("numeric version"))
        .collect();
    // The code needs at least 1.82 (issue 8); the locked dev-dependencies need 1.88.
    assert!(
        parts.len() >= 2 && (parts[0], parts[1]) >= (1, 88),
        "{version}"
    );
    let clippy = read_toml(&root().join("clippy.toml"));
    assert_eq!(
        clippy["msrv"].as_str(),
        Some(version.as_str()),
        "clippy.toml msrv"
    );
    assert_eq!(
        clippy["check-incompatible-msrv-in-tests"].as_bool(),
        Some(true),
        "clippy.toml must check tests against the MSRV too"
    );
    let script = std::fs::read_to_string(root().join("scripts/test.sh")).expect("scripts/test.sh");
    assert!(
        script.contains(r#"msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)"#)
            && script.contains(r#"cargo +"$msrv" check --workspace --all-targets"#),
        "scripts/test.sh must check the workspace with the toolchain of rust-version"
    );
}
