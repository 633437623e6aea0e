//! The `tagmem` binary over fixture sysfs trees: output modes, exit codes and messages.

mod common;

use std::process::{Command, Output};

use common::{dcd_host, dcd_host_unclaimed, TAG_A, TAG_ABSENT};
use serde_json::Value;

fn tagmem(args: &[&str], root: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagmem"))
        .args(args)
        .arg("--sysfs-root")
        .arg(root)
        .output()
        .expect("run tagmem")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn list_prints_json_when_piped_and_skips_seeds_unless_idle() {
    let t = dcd_host();
    let out = tagmem(&["list"], t.root());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = stdout_json(&out);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["chardev"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dax2.1", "dax2.2", "dax2.3"]);
    let out = tagmem(&["list", "--idle", "--json"], t.root());
    assert_eq!(stdout_json(&out).as_array().unwrap().len(), 4);
}

#[test]
fn lookup_prints_the_device_and_exits_0() {
    let t = dcd_host();
    let out = tagmem(&["lookup", TAG_A, "--json"], t.root());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = stdout_json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["chardev"], "dax2.1");
    assert_eq!(v[0]["uuid"], TAG_A);
    assert_eq!(v[0]["size"], 6_291_456);
    // Upper-case input is the same tag.
    let out = tagmem(&["lookup", &TAG_A.to_uppercase()], t.root());
    assert_eq!(stdout_json(&out)[0]["chardev"], "dax2.1");
}

#[test]
fn human_forces_the_table() {
    let t = dcd_host();
    let out = tagmem(&["lookup", TAG_A, "--human"], t.root());
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    // The same two lines README.md shows.
    let want = "\
CHARDEV  UUID                                  SIZE      NODE  MODE    SOURCE  EXTENTS  LAT R/W ns  BW R/W MB/s
dax2.1   6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee  6.00 MiB  2     devdax  cxl-dc  2        250/300     25000/12000
";
    assert_eq!(text, want);
}

#[test]
fn absent_tag_exits_1_with_a_message() {
    let t = dcd_host();
    let out = tagmem(&["lookup", TAG_ABSENT], t.root());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out).trim(),
        format!("tagmem: no device has tag {TAG_ABSENT} and no region holds it")
    );
}

#[test]
fn lookup_of_unclaimed_capacity_prints_its_region_and_the_claim_and_exits_0() {
    let t = dcd_host_unclaimed();
    let out = tagmem(&["lookup", TAG_A, "--json"], t.root());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = stdout_json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["region"], "region2");
    assert_eq!(v[0]["state"], "unclaimed");
    assert_eq!(v[0]["uuid"], TAG_A);
    assert_eq!(v[0]["size"], 6_291_456);
    assert_eq!(v[0]["perf_access_class"], 1);
    assert_eq!(
        v[0]["claim"],
        format!("daxctl create-device -r region2 --uuid {TAG_A}")
    );
    assert!(v[0].get("chardev").is_none());
    let out = tagmem(&["lookup", TAG_A, "--human"], t.root());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().nth(1).unwrap().contains("unclaimed (region2)"),
        "{text}"
    );
    // `list` shows the devices, then the unclaimed group.
    let out = tagmem(&["list", "--json"], t.root());
    let v = stdout_json(&out);
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["chardev"].as_str().or(e["state"].as_str()).unwrap())
        .collect();
    assert_eq!(kinds, ["dax2.2", "dax2.3", "unclaimed"]);
}

#[test]
fn nil_tag_exits_1_and_says_why() {
    let t = dcd_host();
    let out = tagmem(&["lookup", "00000000-0000-0000-0000-000000000000"], t.root());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("matches no device"), "{}", stderr(&out));
}

#[test]
fn malformed_uuid_is_a_usage_error_naming_the_argument() {
    let t = dcd_host();
    let out = tagmem(&["lookup", "6f1c2a9e-0d3b"], t.root());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("'6f1c2a9e-0d3b'") && err.contains("<UUID>"), "{err}");
}

#[test]
fn json_and_human_conflict() {
    let t = dcd_host();
    let out = tagmem(&["list", "--json", "--human"], t.root());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot be used with"), "{}", stderr(&out));
}

#[test]
fn unreadable_tree_exits_2_naming_the_file() {
    let t = dcd_host();
    t.attr("sys/bus/dax/devices/dax2.2/size", "lots");
    let out = tagmem(&["lookup", TAG_A], t.root());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("tagmem: ") && err.contains("dax2.2/size") && err.contains("\"lots\""),
        "{err}"
    );
}
