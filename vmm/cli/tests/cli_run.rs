//! `tagmem-vmm run` with `--api-socket`, driven by `tagmem-vmm client` as a user would: extents
//! from the command line, then added, listed and released at run time; SIGTERM stops the VMM
//! and removes the socket. Skipped without `/dev/kvm`.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tagmem-vmm");
const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
const SHARED: &str = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";

/// Reads stdout lines until one starts with `prefix`; returns every line read.
fn lines_until(out: &mut BufReader<ChildStdout>, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        assert!(
            out.read_line(&mut l).unwrap() > 0,
            "EOF before {prefix:?}: {lines:?}"
        );
        let done = l.starts_with(prefix);
        lines.push(l.trim_end().to_string());
        if done {
            return lines;
        }
    }
}

fn client(sock: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["client", "--api-socket", sock])
        .args(args)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Polls `GET vm.tagged-memory` until every extent in `ids` is accepted; returns that table.
fn wait_accepted(sock: &str, ids: &[u64]) -> serde_json::Value {
    let mut table = serde_json::Value::Null;
    for _ in 0..3000 {
        table = json(&client(sock, &["tagged-memory"]));
        let rows = table.as_array().unwrap();
        let accepted = |id: &u64| {
            rows.iter()
                .any(|r| r["id"].as_u64() == Some(*id) && r["state"] == "accepted")
        };
        if ids.iter().all(accepted) {
            return table;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("extents {ids:?} were never accepted: {table}");
}

struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_serves_the_api_to_the_client_until_sigterm() {
    if !tagmem_test_support::kvm_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("api.sock");
    let sock = sock_path.to_str().unwrap().to_string();
    let mut vmm = Vmm(Command::new(BIN)
        .args([
            "run",
            "--memory",
            "size=64M",
            "--api-socket",
            &format!("path={sock}"),
        ])
        .args(["--tagged-memory", "size=2M,id=boot0"])
        .args([
            "--tagged-memory",
            &format!("tag={TAG},path=memfd,size=4M,read_latency=250,node=1"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    let mut out = BufReader::new(vmm.0.stdout.take().unwrap());
    let boot = lines_until(&mut out, "API listening on");
    // The guest's own view of the boot-time extents.
    let row = boot
        .iter()
        .find(|l| l.contains(TAG))
        .unwrap_or_else(|| panic!("{boot:?}"));
    assert!(row.contains("4 MiB") && row.contains("250 ns"), "{row}");
    assert!(
        boot.iter().any(|l| l.starts_with("offered boot0 (extent 1)")),
        "{boot:?}"
    );

    let ping = json(&client(&sock, &["ping"]));
    assert_eq!(ping["device_ready"], true);

    let added = json(&client(
        &sock,
        &[
            "add-tagged-memory",
            &format!("tag={SHARED},path=memfd,size=2M,shared=on,id=s0"),
            &format!("tag={SHARED},path=memfd,size=2M,shared=on,id=s1"),
        ],
    ));
    let ids: Vec<u64> = added["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["extent_id"].as_u64().unwrap())
        .collect();
    assert_eq!(added["extents"][0]["id"], "s0");
    assert_eq!(added["extents"][1]["size"], 2 << 20);

    // The guest answers the offer on its own time: wait, through the API, until it has accepted
    // the group before asking for its release.
    let table = wait_accepted(&sock, &ids);
    let rows = table.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{table}");
    let s1 = rows.iter().find(|r| r["name"] == "s1").unwrap();
    assert_eq!(
        (s1["seq"].as_u64(), s1["flags"]["sharable"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(rows[0]["name"], "boot0");
    assert_eq!(rows[1]["name"], "_tagmem0");
    // Members keep the server's order in the client's output.
    let text = String::from_utf8(client(&sock, &["tagged-memory"]).stdout).unwrap();
    assert!(
        text.find("\"name\"").unwrap() < text.find("\"chain_id\"").unwrap(),
        "{text}"
    );

    let o = client(&sock, &["release-tagged-memory", "--tag", SHARED]);
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = client(&sock, &["release-tagged-memory", "--extent", "999"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        "tagmem-vmm: /api/v1/vm.release-tagged-memory: 400: extent_id: no such extent or tag: extent 999"
    );
    let o = client(
        &sock,
        &["add-tagged-memory", &format!("tag={TAG},path=memfd,size=2M")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains(&format!("409: extents[0]: tag={TAG}: already present on this VM")));
    // The released group is on its way out: no member is still plainly accepted.
    let table = json(&client(&sock, &["tagged-memory"]));
    for row in table.as_array().unwrap() {
        let id = row["id"].as_u64().unwrap();
        assert!(!ids.contains(&id) || row["state"] != "accepted", "{row}");
    }

    // SIGTERM: a clean stop that removes the socket.
    let pid = i32::try_from(vmm.0.id()).unwrap();
    // SAFETY: kill(2) only sends a signal; `pid` is our child, not reaped yet (the Child lives).
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = vmm.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let tail = lines_until(&mut out, "signal 15: stopping");
    assert!(!tail.is_empty());
    assert!(!sock_path.exists(), "the socket file outlived the VMM");
}
