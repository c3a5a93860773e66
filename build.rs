//! Build information for `autolb version`: the git commit, the cargo profile and the rustc
//! that built the binary, as `AUTOLB_BUILD_GIT`, `AUTOLB_BUILD_PROFILE` and
//! `AUTOLB_BUILD_RUSTC` (compile-time environment variables).
//!
//! Outside a git checkout (a source tarball, a Docker build context without `.git`) the
//! commit comes from the `AUTOLB_GIT_COMMIT` environment variable, else it is "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AUTOLB_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let git = std::env::var("AUTOLB_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().to_string())
        .or_else(|| git_commit(&dir))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=AUTOLB_BUILD_GIT={git}");
    println!("cargo:rustc-env=AUTOLB_BUILD_PROFILE={}", profile());
    println!("cargo:rustc-env=AUTOLB_BUILD_RUSTC={}", rustc());
}

/// `git rev-parse` output, or `None` (no git, not a checkout).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// The commit checked out in `dir`, and a rerun whenever HEAD moves (only files that exist
/// are watched: cargo reruns a build script on every build for a missing one).
fn git_commit(dir: &Path) -> Option<String> {
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    let git_dir = git(dir, &["rev-parse", "--git-dir"]).map(abs);
    let common = git(dir, &["rev-parse", "--git-common-dir"]).map(abs);
    let head_ref = git(dir, &["symbolic-ref", "-q", "HEAD"]);
    let mut watch: Vec<PathBuf> = Vec::new();
    if let Some(g) = &git_dir {
        watch.push(g.join("HEAD"));
    }
    if let Some(c) = &common {
        if let Some(r) = &head_ref {
            watch.push(c.join(r));
        }
        watch.push(c.join("packed-refs"));
    }
    for p in watch.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Some(commit)
}

/// The cargo profile: the directory under the target directory that OUT_DIR sits in
/// (`target/<profile>/build/autolb-<hash>/out`); cargo's PROFILE only says debug or release.
fn profile() -> String {
    std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .and_then(|out| {
            out.ancestors()
                .nth(3)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .or_else(|| std::env::var("PROFILE").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn rustc() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
