//! The command line without a VM: `--help` explains every option with an example, and every
//! malformed value is rejected before a VM starts, with a message naming the option and key.

use std::os::unix::net::UnixListener;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tagmem-vmm");
const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";

fn tagmem(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tagmem-vmm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `args`, expects exit code 2, nothing on stdout (no VM was started: `run` prints only
/// once the guest runs) and `message` as the whole error line.
fn rejected(args: &[&str], message: &str) {
    let o = tagmem(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "",
        "{args:?} printed output, so it went further than parsing"
    );
    assert_eq!(
        stderr(&o).trim_end(),
        format!("tagmem-vmm: {message}"),
        "{args:?}"
    );
}

#[test]
fn help_lists_subcommands_and_examples() {
    let o = tagmem(&["--help"]);
    assert!(o.status.success());
    let h = stdout(&o);
    for s in ["run", "client", "demo", "Examples:", "tagmem-vmm demo"] {
        assert!(h.contains(s), "--help lacks {s}:\n{h}");
    }
}

#[test]
fn run_help_explains_each_option_with_an_example() {
    let h = stdout(&tagmem(&["run", "--help"]));
    let keys = [
        "tag=<uuid>",
        "path=<p>",
        "size=<bytes>",
        "offset=<bytes>",
        "shared=on|off",
        "readonly=on|off",
        "read_latency=<ns>",
        "write_latency=<ns>",
        "read_bandwidth=<MB/s>",
        "write_bandwidth=<MB/s>",
        "node=<n>",
        "id=<name>",
    ];
    for k in keys {
        assert!(h.contains(k), "run --help does not explain {k}:\n{h}");
    }
    for example in [
        "--tagged-memory size=64M",
        &format!("--tagged-memory tag={TAG},path=memfd,size=4M,"),
        "--tagged-memory tag=$TAG,path=/dev/dax0.0,offset=2M,size=1G,shared=on",
        "--api-socket path=/tmp/tagmem.sock",
        "--memory size=128M",
        "--sysfs-root /",
    ] {
        assert!(
            h.contains(example),
            "run --help lacks the example {example}:\n{h}"
        );
    }
    // Short help stays short: one line per option.
    let short = stdout(&tagmem(&["run", "-h"]));
    assert!(short.lines().count() < 20, "{short}");
    // Laid out as written (no line broken by clap), within 100 columns.
    for h in [
        &h,
        &stdout(&tagmem(&["--help"])),
        &stdout(&tagmem(&["demo", "--help"])),
    ] {
        assert!(h.lines().all(|l| l.len() <= 100), "{h}");
    }
}

#[test]
fn client_and_demo_help_have_examples() {
    let h = stdout(&tagmem(&["client", "--help"]));
    for s in [
        "ping",
        "add-tagged-memory",
        "release-tagged-memory",
        "tagged-memory",
        "--api-socket /tmp/tagmem.sock",
    ] {
        assert!(h.contains(s), "client --help lacks {s}:\n{h}");
    }
    let h = stdout(&tagmem(&[
        "client",
        "--api-socket",
        "s",
        "release-tagged-memory",
        "--help",
    ]));
    assert!(h.contains("release-tagged-memory --extent 3"), "{h}");
    let h = stdout(&tagmem(&["demo", "--help"]));
    assert!(
        h.contains("tagmem-vmm demo --tagged-memory tag=$TAG,path=/dev/dax0.0,size=2G"),
        "{h}"
    );
}

#[test]
fn malformed_tagged_memory_is_rejected_before_the_vm_starts() {
    let cases: &[(&str, &str)] = &[
        ("size=3M", "--tagged-memory: size=3M: not a multiple of 2 MiB"),
        ("size=0", "--tagged-memory: size=0: must be at least 2 MiB"),
        ("size=2M,offset=1M", "--tagged-memory: offset=1M: not a multiple of 2 MiB"),
        ("size=2M,size=4M", "--tagged-memory: size: given more than once"),
        ("size=2M,node=", "--tagged-memory: node=: empty value"),
        ("size=2x", "--tagged-memory: size=2x: expected bytes as digits with an optional K, M, G or T suffix"),
        ("size=99999999T", "--tagged-memory: size=99999999T: too large (at most 2^64-1 bytes)"),
        ("size=2M,shared=yes", "--tagged-memory: shared=yes: expected on or off"),
        ("size=2M,shared=on", "--tagged-memory: shared=on: sharable capacity needs a tag=<uuid>"),
        ("size=2M,node=70000", "--tagged-memory: node=70000: expected a decimal number from 0 to 65535"),
        (
            "size=2M,read_latency=fast",
            "--tagged-memory: read_latency=fast: expected a decimal number from 0 to 4294967295",
        ),
        (
            "tag=not-a-uuid,size=2M",
            "--tagged-memory: tag=not-a-uuid: not a UUID (expected e.g. 6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee)",
        ),
        ("path=memfd", "--tagged-memory: size= is required with path=memfd"),
        (
            "size=2M,path=/nonexistent/backing",
            "--tagged-memory: path=/nonexistent/backing: No such file or directory (os error 2)",
        ),
    ];
    for (value, message) in cases {
        rejected(&["run", "--tagged-memory", value], message);
    }
    let o = tagmem(&["run", "--tagged-memory", "size=2M,colour=red"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o)
        .starts_with("tagmem-vmm: --tagged-memory: colour: unknown key; expected one of tag, path,"));
}

#[test]
fn groups_are_checked_across_options() {
    rejected(
        &[
            "run",
            "--tagged-memory",
            &format!("tag={TAG},path=memfd,size=2M,shared=on"),
            "--tagged-memory",
            &format!("tag={TAG},path=memfd,size=2M"),
        ],
        &format!("--tagged-memory: tag={TAG}: shared= differs between extents of the same tag"),
    );
    rejected(
        &[
            "run",
            "--tagged-memory",
            "size=2M,id=a",
            "--tagged-memory",
            "size=4M,id=a",
        ],
        "--tagged-memory: id=a: used by more than one extent",
    );
}

#[test]
fn backing_files_are_checked_before_the_vm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backing");
    std::fs::File::create(&file).unwrap().set_len(4 << 20).unwrap();
    rejected(
        &[
            "run",
            "--tagged-memory",
            &format!("path={},offset=2M,size=4M", file.display()),
        ],
        &format!(
            "--tagged-memory: offset=2M,size=4M: runs past the end of path={} (4 MiB)",
            file.display()
        ),
    );
}

#[test]
fn a_tag_without_path_is_looked_up_on_the_host() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("sys/bus/dax/devices")).unwrap();
    let root_s = root.path().display().to_string();
    rejected(
        &[
            "run",
            "--sysfs-root",
            &root_s,
            "--tagged-memory",
            &format!("tag={TAG}"),
        ],
        &format!(
            "--tagged-memory: tag={TAG}: no dax device under {root_s}/sys/bus/dax/devices carries this tag; \
             give path= to choose a backing"
        ),
    );
    // The demo checks its extents the same way.
    rejected(
        &[
            "demo",
            "--sysfs-root",
            &root_s,
            "--tagged-memory",
            &format!("tag={TAG}"),
        ],
        &format!(
            "--tagged-memory: tag={TAG}: no dax device under {root_s}/sys/bus/dax/devices carries this tag; \
             give path= to choose a backing"
        ),
    );
}

#[test]
fn memory_and_api_socket_values_are_checked() {
    rejected(
        &["run", "--memory", "size=1M"],
        "--memory: size=1M: not a multiple of 2 MiB",
    );
    rejected(
        &["run", "--memory", "sise=64M"],
        "--memory: sise: unknown key; expected one of size, hotplug_size, hotplugged_size",
    );
    rejected(
        &["run", "--api-socket", "path="],
        "--api-socket: path=: empty value",
    );
    rejected(
        &["run", "--api-socket", "path=/nonexistent/dir/api.sock"],
        "--api-socket: path=/nonexistent/dir/api.sock: No such file or directory (os error 2)",
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("busy.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    rejected(
        &["run", "--api-socket", &format!("path={}", sock.display())],
        &format!(
            "--api-socket: path={}: another process is listening on it",
            sock.display()
        ),
    );
}

#[test]
fn client_checks_its_arguments_and_reports_a_missing_vmm() {
    rejected(
        &[
            "client",
            "--api-socket",
            "/nonexistent.sock",
            "add-tagged-memory",
            "size=3M",
        ],
        "add-tagged-memory: size=3M: not a multiple of 2 MiB",
    );
    rejected(
        &[
            "client",
            "--api-socket",
            "/nonexistent.sock",
            "release-tagged-memory",
            "--extent",
            "x",
        ],
        "--extent x: not an extent id (a decimal number)",
    );
    rejected(
        &[
            "client",
            "--api-socket",
            "/nonexistent.sock",
            "release-tagged-memory",
            "--tag",
            "x",
        ],
        "--tag x: not a UUID",
    );
    let o = tagmem(&["client", "--api-socket", "/nonexistent.sock", "ping"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim_end(),
        "tagmem-vmm: /nonexistent.sock: No such file or directory (os error 2)"
    );
    // clap itself refuses a release without a target.
    let o = tagmem(&["client", "--api-socket", "s", "release-tagged-memory"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--tag <uuid>"), "{}", stderr(&o));
}
