//! The user-space tools a Linux test guest runs besides busybox and `daxmap` (which
//! `tagmem_rig::linux` builds): the `tagmem` lookup command (crate `tagmem-lookup`, the binary
//! the host runs, linked statically), and Debian's `daxctl` with its shared libraries
//! (`build-initramfs.sh --daxctl`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Builds the `tagmem` binary linked statically (glibc, `+crt-static`), stripped, in a target
/// directory of its own (under `target/tmp`) so that it never waits for the build running the
/// tests.
pub fn tagmem_static(repo: &Path) -> Result<PathBuf, String> {
    let target = "x86_64-unknown-linux-gnu";
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-tools-target");
    let status = Command::new(env!("CARGO"))
        .current_dir(repo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "tagmem-lookup",
            "--bin",
            "tagmem",
        ])
        .args(["--target", target, "--target-dir"])
        .arg(&dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running cargo build for the static tagmem binary: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build of the static tagmem binary failed: {status}"
        ));
    }
    Ok(dir.join(target).join("release/tagmem"))
}

/// Runs `linux/build-initramfs.sh` with `args` (`--script`, `--file`, ...) writing `out`.
pub fn initramfs(repo: &Path, args: &[String], out: &Path) -> Result<(), String> {
    let builder = repo.join("linux/build-initramfs.sh");
    let status = Command::new("bash")
        .arg(&builder)
        .args(args)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", builder.display()))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", builder.display()));
    }
    Ok(())
}
