//! The base virtio-mem wire format checked against the kernel's own uapi header.
//!
//! `linux_layout.c` is compiled with the system C compiler (`$CC`, default `cc`) against
//! `<linux/virtio_mem.h>`, `<linux/virtio_ids.h>` and `<linux/virtio_config.h>`; it prints the size
//! and offset of every field of `virtio_mem_config`, `virtio_mem_req` and `virtio_mem_resp` and the
//! value of every constant. Each must equal what `tagmem-wire` defines (SPEC.md [T-BASE-1]). A
//! missing compiler or header is a failure, not a skip: the check is only worth something if it
//! runs everywhere.

use core::mem::{offset_of, size_of, size_of_val};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tagmem_wire::{
    VirtioMemConfig, VirtioMemReq, VirtioMemResp, VIRTIO_F_VERSION_1, VIRTIO_ID_MEM, VIRTIO_MEM_F_ACPI_PXM,
    VIRTIO_MEM_F_PERSISTENT_SUSPEND, VIRTIO_MEM_F_TAGGED_EXTENTS, VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
    VIRTIO_MEM_REQ_ACCEPT, VIRTIO_MEM_REQ_LIST, VIRTIO_MEM_REQ_PLUG, VIRTIO_MEM_REQ_RELEASE,
    VIRTIO_MEM_REQ_RELEASE_BUSY, VIRTIO_MEM_REQ_STATE, VIRTIO_MEM_REQ_UNPLUG, VIRTIO_MEM_REQ_UNPLUG_ALL,
    VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_RESP_BUSY, VIRTIO_MEM_RESP_ERROR, VIRTIO_MEM_RESP_NACK,
    VIRTIO_MEM_STATE_MIXED, VIRTIO_MEM_STATE_PLUGGED, VIRTIO_MEM_STATE_UNPLUGGED,
};

const INSTALL_HINT: &str = "this test needs a C compiler and the Linux uapi headers: install gcc and \
     linux-libc-dev (Debian/Ubuntu: `apt-get install gcc linux-libc-dev`; Fedora: `dnf install gcc \
     kernel-headers`), or point $CC at a working compiler";

/// Constants older headers lack; absent from the header output means "not checked".
/// `VIRTIO_MEM_F_PERSISTENT_SUSPEND` entered `<linux/virtio_mem.h>` after Linux 6.1.
const OPTIONAL: &[&str] = &["const VIRTIO_MEM_F_PERSISTENT_SUSPEND"];

fn compiler() -> String {
    std::env::var("CC")
        .ok()
        .filter(|cc| !cc.is_empty())
        .unwrap_or_else(|| "cc".to_owned())
}

fn to_u64(v: usize) -> u64 {
    u64::try_from(v).expect("layout values fit in u64")
}

/// Compiles and runs `linux_layout.c`; returns its "name value" lines as a map.
fn linux_layout() -> BTreeMap<String, u64> {
    let cc = compiler();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("linux_layout.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux_layout");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let exe: PathBuf = dir.join(format!("linux_layout-{}", std::process::id()));

    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}\n{INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "`{cc}` failed to compile {} against <linux/virtio_mem.h>:\n{}\n{INSTALL_HINT}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    let run = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    // Best effort: the binary is only needed for this run.
    let _ = std::fs::remove_file(&exe);
    assert!(
        run.status.success(),
        "{} exited with {}",
        exe.display(),
        run.status
    );

    let stdout = String::from_utf8(run.stdout).expect("layout program prints ASCII");
    let mut map = BTreeMap::new();
    for line in stdout.lines() {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line from layout program: {line:?}"));
        let value: u64 = value
            .parse()
            .unwrap_or_else(|e| panic!("malformed value in {line:?}: {e}"));
        assert!(
            map.insert(name.to_owned(), value).is_none(),
            "duplicate line {line:?}"
        );
    }
    map
}

/// Records offset and size of one field: `field!(v, c_struct, "c.path", RustType, rust_field)`.
macro_rules! field {
    ($v:ident, $cty:literal, $cfield:literal, $ty:ty, $f:ident) => {{
        let x = <$ty>::default();
        $v.push((
            format!("offsetof {}.{}", $cty, $cfield),
            to_u64(offset_of!($ty, $f)),
        ));
        $v.push((format!("sizeof {}.{}", $cty, $cfield), to_u64(size_of_val(&x.$f))));
    }};
}

/// What tagmem-wire says, under the names the C program prints.
fn ours() -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = Vec::new();
    let cfg = "virtio_mem_config";
    v.push((format!("sizeof {cfg}"), to_u64(size_of::<VirtioMemConfig>())));
    field!(v, "virtio_mem_config", "block_size", VirtioMemConfig, block_size);
    field!(v, "virtio_mem_config", "node_id", VirtioMemConfig, node_id);
    field!(v, "virtio_mem_config", "padding", VirtioMemConfig, padding);
    field!(v, "virtio_mem_config", "addr", VirtioMemConfig, addr);
    field!(
        v,
        "virtio_mem_config",
        "region_size",
        VirtioMemConfig,
        region_size
    );
    field!(
        v,
        "virtio_mem_config",
        "usable_region_size",
        VirtioMemConfig,
        usable_region_size
    );
    field!(
        v,
        "virtio_mem_config",
        "plugged_size",
        VirtioMemConfig,
        plugged_size
    );
    field!(
        v,
        "virtio_mem_config",
        "requested_size",
        VirtioMemConfig,
        requested_size
    );

    // Linux nests the PLUG/UNPLUG/STATE bodies in a union `u`; ours flattens the one shared body.
    let req_body = size_of::<VirtioMemReq>() - offset_of!(VirtioMemReq, addr);
    v.push((
        "sizeof virtio_mem_req".to_owned(),
        to_u64(size_of::<VirtioMemReq>()),
    ));
    field!(v, "virtio_mem_req", "type", VirtioMemReq, req_type);
    field!(v, "virtio_mem_req", "padding", VirtioMemReq, padding);
    v.push((
        "offsetof virtio_mem_req.u".to_owned(),
        to_u64(offset_of!(VirtioMemReq, addr)),
    ));
    v.push(("sizeof virtio_mem_req.u".to_owned(), to_u64(req_body)));
    for body in ["plug", "unplug", "state"] {
        let mut b = Vec::new();
        field!(b, "virtio_mem_req", "@.addr", VirtioMemReq, addr);
        field!(b, "virtio_mem_req", "@.nb_blocks", VirtioMemReq, nb_blocks);
        field!(b, "virtio_mem_req", "@.padding", VirtioMemReq, padding_1);
        v.extend(
            b.into_iter()
                .map(|(k, n)| (k.replace('@', &format!("u.{body}")), n)),
        );
        v.push((format!("sizeof virtio_mem_req_{body}"), to_u64(req_body)));
    }

    v.push((
        "sizeof virtio_mem_resp".to_owned(),
        to_u64(size_of::<VirtioMemResp>()),
    ));
    field!(v, "virtio_mem_resp", "type", VirtioMemResp, resp_type);
    field!(v, "virtio_mem_resp", "padding", VirtioMemResp, padding);
    field!(v, "virtio_mem_resp", "u.state.state", VirtioMemResp, state);
    v.push((
        "offsetof virtio_mem_resp.u".to_owned(),
        to_u64(offset_of!(VirtioMemResp, state)),
    ));
    v.push((
        "sizeof virtio_mem_resp.u".to_owned(),
        to_u64(size_of::<VirtioMemResp>() - offset_of!(VirtioMemResp, state)),
    ));
    v.push((
        "sizeof virtio_mem_resp_state".to_owned(),
        to_u64(size_of_val(&VirtioMemResp::default().state)),
    ));

    let consts: [(&str, u64); 16] = [
        ("VIRTIO_ID_MEM", VIRTIO_ID_MEM.into()),
        ("VIRTIO_F_VERSION_1", VIRTIO_F_VERSION_1.into()),
        ("VIRTIO_MEM_F_ACPI_PXM", VIRTIO_MEM_F_ACPI_PXM.into()),
        (
            "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
            VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE.into(),
        ),
        (
            "VIRTIO_MEM_F_PERSISTENT_SUSPEND",
            VIRTIO_MEM_F_PERSISTENT_SUSPEND.into(),
        ),
        ("VIRTIO_MEM_REQ_PLUG", VIRTIO_MEM_REQ_PLUG.into()),
        ("VIRTIO_MEM_REQ_UNPLUG", VIRTIO_MEM_REQ_UNPLUG.into()),
        ("VIRTIO_MEM_REQ_UNPLUG_ALL", VIRTIO_MEM_REQ_UNPLUG_ALL.into()),
        ("VIRTIO_MEM_REQ_STATE", VIRTIO_MEM_REQ_STATE.into()),
        ("VIRTIO_MEM_RESP_ACK", VIRTIO_MEM_RESP_ACK.into()),
        ("VIRTIO_MEM_RESP_NACK", VIRTIO_MEM_RESP_NACK.into()),
        ("VIRTIO_MEM_RESP_BUSY", VIRTIO_MEM_RESP_BUSY.into()),
        ("VIRTIO_MEM_RESP_ERROR", VIRTIO_MEM_RESP_ERROR.into()),
        ("VIRTIO_MEM_STATE_PLUGGED", VIRTIO_MEM_STATE_PLUGGED.into()),
        ("VIRTIO_MEM_STATE_UNPLUGGED", VIRTIO_MEM_STATE_UNPLUGGED.into()),
        ("VIRTIO_MEM_STATE_MIXED", VIRTIO_MEM_STATE_MIXED.into()),
    ];
    // The proposed VIRTIO_MEM_F_TAGGED_EXTENTS has no Linux counterpart; see
    // `proposed_feature_bit_is_not_allocated_by_linux`.
    v.extend(
        consts
            .iter()
            .map(|(name, value)| (format!("const {name}"), *value)),
    );
    v
}

/// [T-BASE-1]: every size, offset and constant of the base format equals Linux's.
#[test]
fn base_layout_matches_linux_uapi_header() {
    let linux = linux_layout();
    let ours = ours();
    let mut problems = Vec::new();
    let mut checked = 0usize;

    for (name, value) in &ours {
        match linux.get(name) {
            Some(l) if l == value => checked += 1,
            Some(l) => problems.push(format!("{name}: Linux {l}, tagmem-wire {value}")),
            None if OPTIONAL.contains(&name.as_str()) => {
                eprintln!("note: the installed header does not define `{name}`; not checked");
            }
            None => problems.push(format!("{name}: not printed by linux_layout.c")),
        }
    }
    for name in linux.keys() {
        if !ours.iter().any(|(n, _)| n == name) {
            problems.push(format!("{name}: printed by linux_layout.c but not compared"));
        }
    }

    assert!(
        problems.is_empty(),
        "base virtio-mem layout differs from <linux/virtio_mem.h>:\n  {}",
        problems.join("\n  ")
    );
    // Guards against a silently empty comparison.
    assert!(checked >= 70, "only {checked} values compared");
}

/// Every `#define NAME VALUE` of `<linux/virtio_mem.h>`, as the preprocessor expands the header.
fn header_macros() -> Vec<(String, String)> {
    let cc = compiler();
    let mut child = Command::new(&cc)
        .args(["-dM", "-E", "-x", "c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}\n{INSTALL_HINT}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(b"#include <linux/virtio_mem.h>\n")
        .expect("write to the preprocessor");
    let out = child.wait_with_output().expect("wait for the preprocessor");
    assert!(
        out.status.success(),
        "`{cc}` failed to preprocess <linux/virtio_mem.h>:\n{}\n{INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("#define"), Some(name), Some(value)) => Some((name.to_string(), value.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// [T-FEAT-1]: bit 3 is a proposal; fail loudly if the installed header allocates it.
#[test]
fn proposed_feature_bit_is_not_allocated_by_linux() {
    let known: [(&str, u32); 3] = [
        ("VIRTIO_MEM_F_ACPI_PXM", VIRTIO_MEM_F_ACPI_PXM),
        (
            "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
            VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
        ),
        ("VIRTIO_MEM_F_PERSISTENT_SUSPEND", VIRTIO_MEM_F_PERSISTENT_SUSPEND),
    ];
    let mut seen = 0usize;
    for (name, value) in header_macros() {
        if !name.starts_with("VIRTIO_MEM_F_") {
            continue;
        }
        seen += 1;
        let bit: u32 = value
            .parse()
            .unwrap_or_else(|e| panic!("{name} = {value:?} is not a plain bit number: {e}"));
        assert_ne!(
            bit, VIRTIO_MEM_F_TAGGED_EXTENTS,
            "<linux/virtio_mem.h> now allocates bit {bit} as {name}; the proposed \
             VIRTIO_MEM_F_TAGGED_EXTENTS collides with it and must move"
        );
        match known.iter().find(|(k, _)| *k == name) {
            Some((_, ours)) => assert_eq!(bit, *ours, "{name}: Linux {bit}, tagmem-wire {ours}"),
            None => panic!("<linux/virtio_mem.h> defines {name} = {bit}, which tagmem-wire does not know"),
        }
    }
    assert!(
        seen >= 2,
        "found only {seen} VIRTIO_MEM_F_* macros in <linux/virtio_mem.h>"
    );
}

/// [T-REQ-1]: the proposed request types 4..=7 continue the base numbering; fail loudly if the
/// installed header allocates any of them.
#[test]
fn proposed_request_types_are_not_allocated_by_linux() {
    let proposed = [
        VIRTIO_MEM_REQ_ACCEPT,
        VIRTIO_MEM_REQ_RELEASE,
        VIRTIO_MEM_REQ_RELEASE_BUSY,
        VIRTIO_MEM_REQ_LIST,
    ];
    let mut seen = 0usize;
    for (name, value) in header_macros() {
        if !name.starts_with("VIRTIO_MEM_REQ_") {
            continue;
        }
        seen += 1;
        let ty: u16 = value
            .parse()
            .unwrap_or_else(|e| panic!("{name} = {value:?} is not a plain request type: {e}"));
        assert!(
            !proposed.contains(&ty),
            "<linux/virtio_mem.h> now allocates request type {ty} as {name}; the proposed tagged \
             request types collide with it and must move"
        );
    }
    assert_eq!(seen, 4, "expected the four base VIRTIO_MEM_REQ_* macros");
}
