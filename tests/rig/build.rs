//! Builds the bare-metal test guest (`tests/guest`) and turns it into a flat image the rig embeds
//! and hands the VMM as its boot source.
//!
//! The guest is a separate cargo project (outside the workspace) compiled for the host target with
//! link flags for a freestanding static binary. The loadable segments are then laid out into a flat
//! image here, in Rust, so no binutils are needed; the load address, entry point and end of the
//! zero-initialised data are written next to it for the rig to check against the VMM's layout.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_BIN: &str = "tagmem-test-guest";

/// Variables of the outer build that must not leak into the nested one: they would redirect its
/// target directory, replace its link flags, make clippy lint it, or attach it to our jobserver.
const LEAKING_VARS: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];

/// Prefixes of further outer-build variables (package metadata, cfg, features, profile overrides).
const LEAKING_PREFIXES: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PROFILE_",
    "CARGO_TARGET_X86_64",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("tests/rig/ lies two levels below the workspace root")
        .to_path_buf();
    let guest_dir = root.join("tests/guest");

    println!("cargo:rerun-if-changed={}", guest_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", guest_dir.join("link.ld").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guest-driver-spec").display()
    );

    let elf = build_guest(&guest_dir, &out_dir);
    let image = flatten(&fs::read(&elf).expect("read guest ELF"));
    fs::write(out_dir.join("test-guest.bin"), &image.bytes).expect("write guest image");
    fs::write(
        out_dir.join("test_guest_layout.rs"),
        format!(
            "/// Guest-physical address the flat test-guest image is loaded at.\n\
             pub const LOAD_ADDR: u64 = {:#x};\n\
             /// Entry point (`_start`).\n\
             pub const ENTRY: u64 = {:#x};\n\
             /// End of the image including its zero-initialised data.\n\
             pub const MEM_END: u64 = {:#x};\n",
            image.load_addr, image.entry, image.mem_end
        ),
    )
    .expect("write guest layout");
}

fn build_guest(guest_dir: &Path, out_dir: &Path) -> PathBuf {
    let target_dir = out_dir.join("guest-target");
    let link_script = guest_dir.join("link.ld");
    let flags = [
        "-C",
        "link-arg=-nostartfiles",
        "-C",
        "link-arg=-nostdlib",
        "-C",
        "link-arg=-static",
        "-C",
        "link-arg=-no-pie",
        "-C",
        "relocation-model=static",
        // No SSE: under this host's KVM (kvm_pvm) the first SSE instruction of the guest ends in a
        // KVM emulation failure even with CR4.OSFXSR/OSXMMEXCPT and XCR0 set. The guest uses no
        // floating point, and with LTO `core` is recompiled without SSE as well.
        "-C",
        "target-feature=-sse,-sse2",
        "-C",
        &format!("link-arg=-T{}", link_script.display()),
    ]
    .join("\x1f");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // An explicit --target keeps the flags off any build scripts and proc macros of dependencies.
    cmd.args(["build", "--release", "--target", GUEST_TARGET, "--manifest-path"])
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(guest_dir);
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if LEAKING_VARS.contains(&k) || LEAKING_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    let status = cmd.status().expect("spawn cargo for the test guest");
    assert!(
        status.success(),
        "building the test guest ({}) failed: {status}",
        guest_dir.display()
    );
    target_dir.join(GUEST_TARGET).join("release").join(GUEST_BIN)
}

struct FlatImage {
    bytes: Vec<u8>,
    load_addr: u64,
    entry: u64,
    mem_end: u64,
}

fn le(bytes: &[u8], off: usize, len: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..len].copy_from_slice(&bytes[off..off + len]);
    u64::from_le_bytes(v)
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("ELF value fits usize")
}

/// Lays the PT_LOAD segments of a static ELF64 out from the lowest load address, like
/// `objcopy -O binary` does.
fn flatten(elf: &[u8]) -> FlatImage {
    const PT_LOAD: u64 = 1;
    assert!(
        elf.len() >= 64 && &elf[..4] == b"\x7fELF",
        "guest is not an ELF file"
    );
    assert_eq!(elf[4], 2, "guest is not ELF64");
    let entry = le(elf, 0x18, 8);
    let phoff = to_usize(le(elf, 0x20, 8));
    let phentsize = to_usize(le(elf, 0x36, 2));
    let phnum = to_usize(le(elf, 0x38, 2));

    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..][..phentsize];
        if le(ph, 0, 4) != PT_LOAD {
            continue;
        }
        let (offset, vaddr, filesz, memsz) =
            (le(ph, 8, 8), le(ph, 0x10, 8), le(ph, 0x20, 8), le(ph, 0x28, 8));
        segs.push((offset, vaddr, filesz, memsz));
    }
    let load_addr = segs
        .iter()
        .map(|s| s.1)
        .min()
        .expect("guest has loadable segments");
    let file_end = segs.iter().map(|s| s.1 + s.2).max().unwrap_or(load_addr);
    let mem_end = segs.iter().map(|s| s.1 + s.3).max().unwrap_or(load_addr);
    assert_eq!(entry, load_addr, "the linker script must put _start first");

    let mut bytes = vec![0u8; to_usize(file_end - load_addr)];
    for (offset, vaddr, filesz, _) in segs {
        let dst = to_usize(vaddr - load_addr);
        let src = &elf[to_usize(offset)..][..to_usize(filesz)];
        bytes[dst..dst + src.len()].copy_from_slice(src);
    }
    FlatImage {
        bytes,
        load_addr,
        entry,
        mem_end,
    }
}
