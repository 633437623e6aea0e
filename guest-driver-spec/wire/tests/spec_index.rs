//! SPEC.md keeps its requirement index and conformance clauses complete: every requirement is
//! defined once, indexed once with its kind, and named by the conformance clause of that kind
//! (host-side rules by none); every id the index or the text cites exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../SPEC.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between the heading that starts with `from` and the next heading of its level or a
/// higher one.
fn section<'a>(text: &'a str, from: &str) -> &'a str {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("SPEC.md has no {from:?}"));
    let level = from.bytes().take_while(|b| *b == b'#').count();
    let rest = &text[start + from.len()..];
    let mut end = rest.len();
    let mut pos = 0;
    for line in rest.split_inclusive('\n') {
        let hashes = line.bytes().take_while(|b| *b == b'#').count();
        if pos > 0 && hashes > 0 && hashes <= level && line.as_bytes().get(hashes) == Some(&b' ') {
            end = pos;
            break;
        }
        pos += line.len();
    }
    &rest[..end]
}

/// Every `[T-AREA-n]` in `text`, with `[T-X-a] to [T-X-b]` expanded.
fn ids(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let words: Vec<&str> = text.split('[').skip(1).collect();
    let mut i = 0;
    while i < words.len() {
        let is_id = |w: &&str| {
            w.strip_prefix("T-")
                .and_then(|r| r.rsplit_once('-'))
                .is_some_and(|(area, n)| {
                    !area.is_empty()
                        && area.bytes().all(|b| b.is_ascii_uppercase())
                        && n.parse::<u32>().is_ok()
                })
        };
        let Some(id) = words[i].split(']').next().filter(is_id) else {
            i += 1;
            continue;
        };
        let after = words[i].split(']').nth(1).unwrap_or("");
        if after.trim() == "to" && i + 1 < words.len() {
            let last = words[i + 1].split(']').next().unwrap_or("");
            let (area, a) = id.rsplit_once('-').expect("T-AREA-n");
            let (area2, b) = last.rsplit_once('-').expect("T-AREA-n");
            assert_eq!(area, area2, "range {id} to {last}");
            let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
            out.extend((a..=b).map(|n| format!("{area}-{n}")));
            i += 2;
            continue;
        }
        out.insert(id.to_string());
        i += 1;
    }
    out
}

#[test]
fn requirement_index_and_conformance_clauses_are_complete() {
    let text = spec();
    let mut defined: BTreeMap<String, usize> = BTreeMap::new();
    for part in text.split("**[").skip(1) {
        let id = part.split(']').next().unwrap_or("");
        if id.starts_with("T-") && part[id.len()..].starts_with("]**") {
            *defined.entry(id.to_string()).or_default() += 1;
        }
    }
    assert!(defined.len() >= 90, "only {} requirements found", defined.len());
    let twice: Vec<_> = defined.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "defined more than once: {twice:?}");

    let index = section(&text, "## T.13 Requirement index");
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for line in index.lines().filter(|l| l.starts_with("| T-")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(
            kinds.insert(cells[1].to_string(), cells[2].to_string()).is_none(),
            "{} indexed twice",
            cells[1]
        );
    }
    let defined_ids: BTreeSet<String> = defined.keys().cloned().collect();
    let indexed: BTreeSet<String> = kinds.keys().cloned().collect();
    assert_eq!(
        defined_ids, indexed,
        "the index lists exactly the defined requirements"
    );
    let cited = ids(&text);
    let unknown: Vec<_> = cited.difference(&defined_ids).collect();
    assert!(unknown.is_empty(), "cited but not defined: {unknown:?}");

    let clause = |heading: &str| ids(section(&text, heading));
    let clauses = [
        ("device", clause("### T.12.1 Device conformance")),
        ("driver", clause("### T.12.2 Driver conformance")),
        ("nested VMM", clause("### T.12.3 Nested VMM conformance")),
    ];
    for (id, kind) in &kinds {
        let named: Vec<&str> = clauses
            .iter()
            .filter(|(_, ids)| ids.contains(id))
            .map(|(k, _)| *k)
            .collect();
        if kind.starts_with("host") {
            assert!(
                named.is_empty(),
                "{id} is a host-side rule but {named:?} names it"
            );
            assert!(
                section(&text, "## Appendix A").contains(&format!("**[{id}]**")),
                "{id} is a host-side rule outside Appendix A"
            );
        } else {
            assert_eq!(
                named,
                [kind.as_str()],
                "{id} ({kind}) in the wrong conformance clauses"
            );
        }
    }
}
