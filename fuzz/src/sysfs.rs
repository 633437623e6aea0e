//! Sysfs parsing: a tree of directories, attributes, symlinks and special files built from the
//! input under a temporary root, then listed and searched by tag as `tagmem lookup` does. Any
//! tree is answered or refused with an error naming a file; what is answered is consistent.
//!
//! The input is a list of entries ([`Entry::decode`], [`Entry::encode`]); seeds are real trees
//! (the lookup crate's fixtures of a CXL DCD host and a guest) dumped with [`dump`].

use crate::bytes::{Reader, Writer};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use tagmem_lookup::{list, lookup, output, CapacitySource, LookupError, SysfsSource};

/// Most entries of one tree.
const MAX_ENTRIES: usize = 256;
/// Most bytes of one attribute (twice what sysfs allows, so oversized files occur).
const MAX_CONTENT: usize = 2 * tagmem_lookup::ATTR_MAX + 2;

/// A special file the tree may hold where an attribute should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// A FIFO (reading one must not block).
    Fifo,
    /// A symlink to `/dev/zero` (reading it must not go on for ever).
    Zero,
    /// A symlink to `/dev/null`.
    Null,
}

/// One entry of a tree; paths are relative to its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File(Vec<u8>, Vec<u8>),
    /// A directory.
    Dir(Vec<u8>),
    /// A symlink to another path of the tree.
    Link(Vec<u8>, Vec<u8>),
    /// A special file.
    Special(Vec<u8>, Special),
}

impl Entry {
    /// Reads one entry.
    pub fn decode(r: &mut Reader<'_>) -> Entry {
        match r.u8() % 4 {
            0 => Entry::File(r.blob(256).to_vec(), r.blob(MAX_CONTENT).to_vec()),
            1 => Entry::Dir(r.blob(256).to_vec()),
            2 => Entry::Link(r.blob(256).to_vec(), r.blob(256).to_vec()),
            _ => {
                let path = r.blob(256).to_vec();
                let s = match r.u8() % 3 {
                    0 => Special::Fifo,
                    1 => Special::Zero,
                    _ => Special::Null,
                };
                Entry::Special(path, s)
            }
        }
    }

    /// Writes the entry as [`Entry::decode`] reads it.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Entry::File(p, c) => {
                w.u8(0).blob(p).blob(c);
            }
            Entry::Dir(p) => {
                w.u8(1).blob(p);
            }
            Entry::Link(p, t) => {
                w.u8(2).blob(p).blob(t);
            }
            Entry::Special(p, s) => {
                let k = match s {
                    Special::Fifo => 0,
                    Special::Zero => 1,
                    Special::Null => 2,
                };
                w.u8(3).blob(p).u8(k);
            }
        }
    }
}

/// A relative path made of normal components only (no `..`, no root, at most 16 deep).
fn clean(raw: &[u8]) -> Option<PathBuf> {
    if raw.is_empty() || raw.contains(&0) {
        return None;
    }
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) if n.len() <= 128 => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    (out.components().count() > 0 && out.components().count() <= 16).then_some(out)
}

/// Builds the entries under `root`; entries that cannot be made (a file where a directory
/// should be, a path already taken) are skipped.
pub fn build(root: &Path, entries: &[Entry]) {
    for e in entries.iter().take(MAX_ENTRIES) {
        let (raw, _) = match e {
            Entry::File(p, _) | Entry::Dir(p) | Entry::Link(p, _) | Entry::Special(p, _) => (p, ()),
        };
        let Some(rel) = clean(raw) else { continue };
        let path = root.join(&rel);
        if let Some(parent) = path.parent() {
            if fs::create_dir_all(parent).is_err() {
                continue;
            }
        }
        let _ = match e {
            Entry::File(_, content) => fs::write(&path, content),
            Entry::Dir(_) => fs::create_dir_all(&path),
            Entry::Link(_, target) => match clean(target) {
                Some(t) => symlink(root.join(t), &path),
                None => Ok(()),
            },
            Entry::Special(_, Special::Fifo) => {
                let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in a clean path");
                // SAFETY: `c` is a NUL-terminated path; mkfifo only creates a file there.
                unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
                Ok(())
            }
            Entry::Special(_, Special::Zero) => symlink("/dev/zero", &path),
            Entry::Special(_, Special::Null) => symlink("/dev/null", &path),
        };
    }
}

/// Reads a tree back as entries (the inverse of [`build`], for seeds): directories, files and
/// symlinks into the tree, in a stable order.
pub fn dump(root: &Path) -> Vec<Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.sort();
        for p in names {
            let rel = p
                .strip_prefix(root)
                .expect("inside the root")
                .as_os_str()
                .as_bytes()
                .to_vec();
            let Ok(meta) = fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&p).expect("a symlink");
                match target.strip_prefix(root) {
                    Ok(t) => out.push(Entry::Link(rel, t.as_os_str().as_bytes().to_vec())),
                    Err(_) if target == Path::new("/dev/zero") => {
                        out.push(Entry::Special(rel, Special::Zero))
                    }
                    Err(_) => out.push(Entry::Special(rel, Special::Null)),
                }
            } else if meta.is_dir() {
                out.push(Entry::Dir(rel));
                walk(root, &p, out);
            } else if meta.file_type().is_file() {
                out.push(Entry::File(rel, fs::read(&p).expect("readable")));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// Encodes a tree.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut w = Writer::default();
    for e in entries {
        e.encode(&mut w);
    }
    w.out
}

/// Decodes a tree.
pub fn decode(data: &[u8]) -> Vec<Entry> {
    let mut r = Reader::new(data);
    let mut out = Vec::new();
    while !r.is_empty() && out.len() < MAX_ENTRIES {
        out.push(Entry::decode(&mut r));
    }
    out
}

/// A lookup error must name a file of the tree (or, for a device built from several, the device).
fn check_error(root: &Path, e: &LookupError) {
    if let LookupError::InvalidDevice { .. } = e {
        return;
    }
    let msg = e.to_string();
    assert!(
        msg.starts_with(&root.display().to_string()),
        "a lookup error names the file at fault: {msg}"
    );
}

/// Builds the tree of `data` and looks through it as `tagmem lookup` does.
pub fn check(data: &[u8]) {
    let entries = decode(data);
    let dir = tempfile::Builder::new()
        .prefix("tagmem-fuzz-")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory");
    let root = dir.path();
    build(root, &entries);
    let src = SysfsSource::new(root);
    let found = match list(&src) {
        Ok(f) => f,
        Err(e) => return check_error(root, &e),
    };
    let json = output::found_json_string(&found);
    serde_json::from_str::<serde_json::Value>(&json).expect("the listing is JSON");
    let _ = output::found_table(&found);
    for d in &found.devices {
        assert!(
            d.mappings.iter().all(|m| m.size > 0),
            "{}: an empty mapping",
            d.chardev
        );
        if !d.mappings.is_empty() {
            let sum = d.mappings.iter().try_fold(0u64, |s, m| s.checked_add(m.size));
            assert_eq!(sum, Some(d.size), "{}: mappings cover the size", d.chardev);
        }
        assert_eq!(
            src.read_device(&d.chardev).as_ref().ok(),
            Some(d),
            "a device reads alike twice"
        );
    }
    let tags: Vec<uuid::Uuid> = found
        .devices
        .iter()
        .map(|d| d.uuid)
        .chain(found.unclaimed.iter().map(|u| u.uuid))
        .filter(|t| !t.is_nil())
        .collect();
    for tag in tags.iter().take(8) {
        let hit = lookup(&src, tag).expect("a tree that lists can be searched");
        assert!(!hit.is_empty(), "tag {tag} is listed but not found");
        assert!(hit
            .devices
            .iter()
            .all(|d| d.has_tag(tag) && found.devices.contains(d)));
        assert!(hit
            .unclaimed
            .iter()
            .all(|u| u.has_tag(tag) && found.unclaimed.contains(u)));
        let _ = output::found_json_string(&hit);
    }
    assert!(lookup(&src, &uuid::Uuid::nil()).expect("nil").is_empty());
    let _ = src.unclaimed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(clean(b"sys/bus/dax"), Some(PathBuf::from("sys/bus/dax")));
        assert_eq!(clean(b"/sys//bus/./dax/"), Some(PathBuf::from("sys/bus/dax")));
        assert_eq!(clean(b"sys/../../etc"), None);
        assert_eq!(clean(b""), None);
        assert_eq!(clean(b"a\0b"), None);
    }

    #[test]
    fn trees_dump_and_build_alike() {
        let entries = vec![
            Entry::Dir(b"sys/bus/dax/devices".to_vec()),
            Entry::File(b"sys/devices/dax0.0/size".to_vec(), b"2097152\n".to_vec()),
            Entry::Link(
                b"sys/bus/dax/devices/dax0.0".to_vec(),
                b"sys/devices/dax0.0".to_vec(),
            ),
            Entry::Special(b"sys/devices/dax0.0/uuid".to_vec(), Special::Zero),
        ];
        assert_eq!(decode(&encode(&entries)), entries);
        let a = tempfile::tempdir().unwrap();
        build(a.path(), &entries);
        let dumped = dump(a.path());
        let b = tempfile::tempdir().unwrap();
        build(b.path(), &dumped);
        assert_eq!(dump(b.path()), dumped);
        assert!(dumped.contains(&Entry::Special(
            b"sys/devices/dax0.0/uuid".to_vec(),
            Special::Zero
        )));
    }
}
