//! How tests that need a host facility skip or fail. Every KVM test starts with [`kvm_or_skip`]:
//! without a usable `/dev/kvm` the test skips, saying why, on a developer's machine; where
//! [`REQUIRE_KVM`]` = 1` (CI sets it in `.ci/run`) it fails instead, so a KVM test can never pass
//! by skipping. Other facilities (a built kernel, ...) use [`available_or_skip`] with their own
//! variable.

use std::fs::OpenOptions;

/// The variable that turns "no `/dev/kvm`, skipping" into a failure: `1` requires KVM, `0` or
/// unset lets KVM tests skip.
pub const REQUIRE_KVM: &str = "TAGMEM_REQUIRE_KVM";

/// What a test that needs a facility does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The facility is there: run.
    Run,
    /// It is missing and may be: print this and pass without running.
    Skip(String),
    /// It is missing and must not be (or the variable is malformed): fail with this.
    Fail(String),
}

/// Decides from the value of `var` (`required`) and why `what` is missing (`None`: it is not).
pub fn verdict(required: Option<&str>, var: &str, what: &str, missing: Option<String>) -> Verdict {
    let required = match required.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some("1") => true,
        Some(other) => {
            return Verdict::Fail(format!(
                "{var}={other}: expected 1 (require {what}) or 0 (tests may skip without it)"
            ))
        }
    };
    match missing {
        None => Verdict::Run,
        Some(reason) if required => Verdict::Fail(format!(
            "{var}=1 but {what} is not available ({reason}); this test may not skip here"
        )),
        Some(reason) => Verdict::Skip(format!(
            "skipped: {what} not available ({reason}); set {var}=1 to make this a failure"
        )),
    }
}

/// Whether a test that needs `what` runs: `true` if it is available, `false` after printing why
/// the test skips; panics when `var` forbids skipping (or is malformed).
pub fn available_or_skip(var: &str, what: &str, missing: Option<String>) -> bool {
    match verdict(std::env::var(var).ok().as_deref(), var, what, missing) {
        Verdict::Run => true,
        Verdict::Skip(message) => {
            println!("{message}");
            false
        }
        Verdict::Fail(message) => panic!("{message}"),
    }
}

/// Why `/dev/kvm` cannot be opened for reading and writing (as a VMM opens it), or `None`.
pub fn kvm_unavailable() -> Option<String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .err()
        .map(|e| format!("opening /dev/kvm: {e}"))
}

/// The check every KVM test starts with: `true` to run; `false` (after saying why) to skip;
/// a panic where [`REQUIRE_KVM`]` = 1` and KVM is missing.
pub fn kvm_or_skip() -> bool {
    available_or_skip(REQUIRE_KVM, "/dev/kvm", kvm_unavailable())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const WHAT: &str = "/dev/kvm";

    fn decide(required: Option<&str>, missing: Option<&str>) -> Verdict {
        verdict(required, REQUIRE_KVM, WHAT, missing.map(str::to_string))
    }

    #[test]
    fn d_required_kvm_turns_the_skip_into_a_failure() {
        let gone = Some("opening /dev/kvm: No such file or directory (os error 2)");
        assert_eq!(
            decide(Some("1"), gone),
            Verdict::Fail(
                "TAGMEM_REQUIRE_KVM=1 but /dev/kvm is not available (opening /dev/kvm: No such \
                 file or directory (os error 2)); this test may not skip here"
                    .into()
            )
        );
        for unset in [None, Some(""), Some("0")] {
            assert!(
                matches!(decide(unset, gone), Verdict::Skip(m) if m.starts_with("skipped: /dev/kvm not available"))
            );
        }
        for any in [None, Some("0"), Some("1")] {
            assert_eq!(decide(any, None), Verdict::Run);
        }
        // A malformed value fails whether KVM is there or not, so a typo in CI cannot skip.
        for missing in [None, gone] {
            assert_eq!(
                decide(Some("yes"), missing),
                Verdict::Fail(
                    "TAGMEM_REQUIRE_KVM=yes: expected 1 (require /dev/kvm) or 0 (tests may skip \
                     without it)"
                        .into()
                )
            );
        }
    }

    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = entry.file_name();
            if entry.file_type().unwrap().is_dir() {
                // Build output and hidden trees (.git, fetched sources) hold no tests of ours.
                let skip = name.to_str().is_none_or(|n| n == "target" || n.starts_with('.'));
                if !skip {
                    rust_files(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn d_every_kvm_test_skips_only_through_the_one_helper() {
        let root = workspace_root();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        // The VMM itself may report missing KVM (its CLI does); tests, benches and harnesses
        // decide through kvm_or_skip.
        let own = [
            root.join("vmm/src"),
            root.join("vmm/cli/src"),
            root.join("tests/support"),
        ];
        let offenders: Vec<String> = files
            .iter()
            .filter(|f| !own.iter().any(|o| f.starts_with(o)))
            .filter(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                text.contains("kvm_unavailable(") || text.contains("\"/dev/kvm\"")
            })
            .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert!(files.len() > 50, "the walk found only {} files", files.len());
        assert!(
            offenders.is_empty(),
            "these decide on their own whether KVM is missing; use tagmem_test_support::kvm_or_skip: {offenders:?}"
        );
    }

    #[test]
    fn d_ci_requires_kvm() {
        let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
        assert!(
            ci.lines().any(|l| l.trim() == format!("export {REQUIRE_KVM}=1")),
            ".ci/run does not export {REQUIRE_KVM}=1"
        );
    }
}
