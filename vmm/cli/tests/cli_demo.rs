//! `tagmem-vmm demo` as a user runs it: the built-in memfd set, and extents given on the command
//! line (here on a file, as a stand-in for a devdax device). Skipped without `/dev/kvm`.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tagmem-vmm");

/// Runs the demo with `args`; returns its output after checking it succeeded in time.
fn demo(args: &[&str]) -> String {
    let start = Instant::now();
    let o = Command::new(BIN)
        .arg("demo")
        .args(args)
        .output()
        .expect("run the demo");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "demo failed: {}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the demo took {:?}",
        start.elapsed()
    );
    out
}

/// The device rows of the table that follows `heading`.
fn table_after<'a>(out: &'a str, heading: &str) -> Vec<&'a str> {
    rows_after(out, heading, "dax")
}

/// The rows starting with `first` (`dax` for devices, `(region0)` for unclaimed capacity) of
/// the table that follows `heading`.
fn rows_after<'a>(out: &'a str, heading: &str, first: &str) -> Vec<&'a str> {
    let rest = &out[out
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{out}"))..];
    rest.lines()
        .skip_while(|l| !l.trim_start().starts_with("------"))
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("dax") || l.trim_start().starts_with("(region0)"))
        .filter(|l| l.trim_start().starts_with(first))
        .collect()
}

const HOT_ADD: &str = "What the guest reports after the hot-add (accepted, held unclaimed by region0):";

#[test]
fn builtin_demo_shows_the_guest_view_before_and_after_the_release() {
    if !tagmem_test_support::kvm_or_skip() {
        return;
    }
    let out = demo(&[]);
    // As on a CXL DCD host, the accepted groups wait unclaimed until the guest claims them.
    assert!(table_after(&out, HOT_ADD).is_empty(), "{out}");
    assert_eq!(rows_after(&out, HOT_ADD, "(region0)").len(), 4, "{out}");
    for claim in [
        "guest  daxctl create-device -r region0 --uuid 0: dax0.0",
        "guest  daxctl create-device -r region0 --uuid 6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee: dax0.1",
    ] {
        assert!(out.contains(claim), "timeline lacks {claim:?}:\n{out}");
    }
    let before = table_after(&out, "What the guest reports after the claims:");
    let after = table_after(&out, "What the guest reports after releasing tag");
    assert_eq!(before.len(), 4, "{out}");
    assert_eq!(after.len(), 3, "{out}");
    // The tagged group with HMAT-like metadata, with units, as the guest reports it.
    let hbm = before
        .iter()
        .find(|l| l.contains("6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee"))
        .unwrap();
    for cell in ["6 MiB", "80 ns", "95 ns", "409600 MB/s", "307200 MB/s", "file"] {
        assert!(hbm.contains(cell), "{cell} missing: {hbm}");
    }
    assert!(before.iter().any(|l| l.contains("sharable")), "{out}");
    assert!(before.iter().any(|l| l.contains("readonly")), "{out}");
    // After: the sharable group is gone, the metadata update and the poison are visible.
    assert!(
        !after
            .iter()
            .any(|l| l.contains("0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e")),
        "{out}"
    );
    let hbm = after
        .iter()
        .find(|l| l.contains("6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee"))
        .unwrap();
    assert!(hbm.contains("120 ns") && hbm.contains("@0x100000+4K"), "{hbm}");
    // The timeline has the guest driver's own log lines.
    for evt in [
        "guest  dax0.2: release requested",
        "guest  dax0.1: extent 3 poisoned",
        "guest  chain 4: accepted [6]",
    ] {
        assert!(out.contains(evt), "timeline lacks {evt:?}:\n{out}");
    }
    assert!(out.contains("15 checks passed"), "{out}");
}

#[test]
fn demo_runs_on_extents_given_on_the_command_line() {
    if !tagmem_test_support::kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capacity");
    std::fs::File::create(&file).unwrap().set_len(8 << 20).unwrap();
    let a = "1e7a0b3c-5d6e-4f70-8192-a3b4c5d6e7f8";
    let b = "2f8b1c4d-6e7f-4081-92a3-b4c5d6e7f809";
    let out = demo(&[
        "--tagged-memory",
        &format!("tag={a},path={},size=4M,read_latency=300,id=f0", file.display()),
        "--tagged-memory",
        &format!(
            "tag={b},path={},offset=4M,size=2M,shared=on,id=f1",
            file.display()
        ),
        "--tagged-memory",
        &format!(
            "tag={b},path={},offset=6M,size=2M,shared=on,id=f2",
            file.display()
        ),
    ]);
    assert_eq!(rows_after(&out, HOT_ADD, "(region0)").len(), 2, "{out}");
    let before = table_after(&out, "What the guest reports after the claims:");
    let after = table_after(&out, &format!("What the guest reports after releasing tag {b}"));
    assert_eq!((before.len(), after.len()), (2, 1), "{out}");
    assert!(
        before[1].contains("sharable") && before[1].contains("4 MiB"),
        "{out}"
    );
    assert!(out.contains("f1: host wrote 1024 bytes"), "{out}");
}
