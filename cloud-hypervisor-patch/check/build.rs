//! Extracts the adapter's source files from the patch series (the parent folder) into `OUT_DIR`,
//! so `src/lib.rs` compiles them exactly as the series adds them to Cloud Hypervisor.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The files of the series that call the device core and the host model, compiled here against
/// stub CH items: the adapter in `virtio-devices` and the VMM's memory mapper.
const ADAPTER_FILES: [&str; 3] = [
    "virtio-devices/src/tagged_mem.rs",
    "virtio-devices/src/tagged_mem_sources.rs",
    "vmm/src/tagged_memory.rs",
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let series = manifest.join("..");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={}", series.display());
    let mut patches: Vec<PathBuf> = fs::read_dir(&series)
        .expect("series folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    patches.sort();
    for p in &patches {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    for file in ADAPTER_FILES {
        let text = extract(&patches, file);
        let name = Path::new(file).file_name().expect("file name");
        fs::write(out.join(name), text).expect("write extracted file");
    }
}

/// The text of `file` as the series creates it: the `+` lines of its new-file diff. Fails if no
/// patch creates it or a later patch changes it (this extractor applies no hunks).
fn extract(patches: &[PathBuf], file: &str) -> String {
    let header = format!("diff --git a/{file} b/{file}\n");
    let mut found: Option<String> = None;
    for p in patches {
        let patch = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let Some(start) = patch.find(&header) else {
            continue;
        };
        let body = &patch[start + header.len()..];
        let end = body.find("\ndiff --git ").map_or(body.len(), |i| i + 1);
        let body = &body[..end];
        assert!(
            found.is_none() && body.starts_with("new file mode"),
            "{}: changes {file} after it was created; the check compiles only files one patch adds",
            p.display()
        );
        let hunk = body
            .find("\n@@ ")
            .unwrap_or_else(|| panic!("{}: {file} has no hunk", p.display()));
        let mut text = String::new();
        for line in body[hunk + 1..].lines().skip(1) {
            if let Some(l) = line.strip_prefix('+') {
                // Inner doc comments cannot stand in an `include!`d file.
                let l = l
                    .strip_prefix("//!")
                    .map_or(l.to_string(), |rest| format!("//{rest}"));
                text.push_str(&l);
                text.push('\n');
            } else if line.starts_with("-- ") || line == "--" {
                break; // the signature that closes the patch
            } else if !line.starts_with('\\') {
                panic!("{}: unexpected line in new file {file}: {line:?}", p.display());
            }
        }
        found = Some(text);
    }
    found.unwrap_or_else(|| panic!("no patch of the series creates {file}"))
}
