//! Build identity for `aip --version` and `/api/health`: the git commit (when built from a
//! checkout; `unknown` from a source tarball) and the target triple.

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=AIP_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=AIP_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=AIP_BUILD_PROFILE={}",
        std::env::var("PROFILE").unwrap_or_default()
    );
    // Rebuilt when HEAD moves (a commit or a checkout), not on every source change.
    for path in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
