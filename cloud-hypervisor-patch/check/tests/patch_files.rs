//! The patch series is well-formed `git format-patch` output and touches exactly the files the
//! README lists. Nothing is applied: Cloud Hypervisor is not fetched or built here.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn series_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The series' patch files, in order.
fn patches() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(series_dir())
        .expect("series folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .map(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, text)
        })
        .collect();
    files.sort();
    files
}

/// Paths listed in the README's fenced block marked `files`.
fn readme_files() -> BTreeSet<String> {
    let readme = fs::read_to_string(series_dir().join("README.md")).expect("README.md");
    let start = readme.find("```files\n").expect("README has a ```files block") + "```files\n".len();
    let end = readme[start..].find("```").expect("```files block is closed") + start;
    readme[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `@@ -a[,b] +c[,d] @@` into (old lines, new lines).
fn hunk_counts(header: &str) -> Option<(u64, u64)> {
    let rest = header.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let count = |r: &str| -> Option<u64> {
        match r.split_once(',') {
            Some((start, n)) => {
                start.parse::<u64>().ok()?;
                n.parse().ok()
            }
            None => {
                r.parse::<u64>().ok()?;
                Some(1)
            }
        }
    };
    Some((count(old)?, count(new)?))
}

/// Checks one patch; returns the paths its diffs touch.
fn check_patch(name: &str, text: &str, index: usize, total: usize) -> BTreeSet<String> {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.first().copied().unwrap_or_default();
    let sha = first
        .strip_prefix("From ")
        .and_then(|r| r.strip_suffix(" Mon Sep 17 00:00:00 2001"))
        .unwrap_or_else(|| panic!("{name}: first line is not a format-patch header: {first:?}"));
    assert!(
        sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}: bad commit id {sha:?}"
    );
    let header_end = lines.iter().position(|l| l.is_empty()).unwrap_or(0);
    let header = &lines[..header_end];
    assert!(header.iter().any(|l| l.starts_with("From: ")), "{name}: no From:");
    assert!(header.iter().any(|l| l.starts_with("Date: ")), "{name}: no Date:");
    let subject = format!("Subject: [PATCH {}/{}] ", index + 1, total);
    assert!(
        header.iter().any(|l| l.starts_with(&subject)),
        "{name}: no {subject:?} line"
    );
    assert!(
        name.starts_with(&format!("{:04}-", index + 1)),
        "{name}: not numbered {:04}",
        index + 1
    );

    // The diffstat sits between `---` and the first diff.
    let sep = lines
        .iter()
        .position(|l| *l == "---")
        .unwrap_or_else(|| panic!("{name}: no ---"));
    let first_diff = lines
        .iter()
        .position(|l| l.starts_with("diff --git "))
        .unwrap_or_else(|| panic!("{name}: no diff"));
    assert!(sep < first_diff, "{name}: --- after the first diff");
    assert!(
        lines[sep..first_diff]
            .iter()
            .any(|l| l.contains(" changed") && (l.contains(" file changed") || l.contains(" files changed"))),
        "{name}: no diffstat summary"
    );

    let mut touched = BTreeSet::new();
    let mut i = first_diff;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.strip_prefix("diff --git ") {
            let (a, b) = rest.split_once(' ').unwrap_or_else(|| panic!("{name}: {line:?}"));
            let a = a.strip_prefix("a/").unwrap_or_else(|| panic!("{name}: {line:?}"));
            let b = b.strip_prefix("b/").unwrap_or_else(|| panic!("{name}: {line:?}"));
            assert_eq!(a, b, "{name}: renames are not expected");
            touched.insert(b.to_string());
            i += 1;
            continue;
        }
        if line.starts_with("@@ ") {
            let (mut old, mut new) =
                hunk_counts(line).unwrap_or_else(|| panic!("{name}: bad hunk header {line:?}"));
            i += 1;
            while old > 0 || new > 0 {
                let body = lines
                    .get(i)
                    .unwrap_or_else(|| panic!("{name}: hunk {line:?} ends early"));
                match body.as_bytes().first() {
                    Some(b' ') | None => {
                        old = old.checked_sub(1).expect("context past the old count");
                        new = new.checked_sub(1).expect("context past the new count");
                    }
                    Some(b'-') => old = old.checked_sub(1).expect("removal past the old count"),
                    Some(b'+') => new = new.checked_sub(1).expect("addition past the new count"),
                    Some(b'\\') => {}
                    _ => panic!("{name}: line {} inside hunk {line:?}: {body:?}", i + 1),
                }
                i += 1;
            }
            if lines.get(i).is_some_and(|l| l.starts_with('\\')) {
                i += 1;
            }
            continue;
        }
        if line == "-- " {
            // Signature: the format-patch trailer.
            break;
        }
        let known = [
            "index ",
            "--- ",
            "+++ ",
            "new file mode ",
            "deleted file mode ",
            "old mode ",
            "new mode ",
        ];
        assert!(
            known.iter().any(|k| line.starts_with(k)),
            "{name}: unexpected line {} between diffs: {line:?}",
            i + 1
        );
        i += 1;
    }
    assert!(
        lines[i..].first() == Some(&"-- "),
        "{name}: no format-patch trailer"
    );
    touched
}

#[test]
fn series_is_well_formed_and_touches_only_listed_files() {
    let patches = patches();
    assert!(!patches.is_empty(), "no .patch files in the series folder");
    let mut touched = BTreeSet::new();
    for (index, (name, text)) in patches.iter().enumerate() {
        touched.extend(check_patch(name, text, index, patches.len()));
    }
    let listed = readme_files();
    let unlisted: Vec<_> = touched.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "patches touch files the README does not list: {unlisted:?}"
    );
    let untouched: Vec<_> = listed.difference(&touched).collect();
    assert!(
        untouched.is_empty(),
        "README lists files no patch touches: {untouched:?}"
    );
}

#[test]
fn hunk_headers_parse() {
    assert_eq!(hunk_counts("@@ -1,5 +1,7 @@ fn main() {"), Some((5, 7)));
    assert_eq!(hunk_counts("@@ -0,0 +1 @@"), Some((0, 1)));
    assert_eq!(hunk_counts("@@ -3 +3,0 @@"), Some((1, 0)));
    assert_eq!(hunk_counts("@@ -x,1 +1 @@"), None);
    assert_eq!(hunk_counts("@@ -1,1 1 @@"), None);
}

#[test]
#[should_panic(expected = "ends early")]
fn a_short_hunk_is_caught() {
    let text = "From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\n\
                From: A <a@example.org>\nDate: Mon, 1 Jan 2026 00:00:00 +0000\n\
                Subject: [PATCH 1/1] x\n\n---\n a | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n\n\
                diff --git a/a b/a\nindex 1..2 100644\n--- a/a\n+++ b/a\n@@ -1,2 +1,2 @@\n-x\n+y\n";
    check_patch("0001-x.patch", text, 0, 1);
}
