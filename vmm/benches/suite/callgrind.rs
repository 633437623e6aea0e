//! Callgrind client requests, so the benchmark can count the host instructions of each operation
//! when it runs under `valgrind --tool=callgrind` (see `counts`). Natively each request is a
//! handful of register rotations that do nothing.
//!
//! This is valgrind.h's "special instruction sequence" for x86-64, written out because the only
//! client-request crate generates its bindings with libclang, which this build does not need
//! otherwise. The request codes are those of `<valgrind/valgrind.h>` and `<valgrind/callgrind.h>`.

/// `VG_USERREQ_TOOL_BASE('C', 'T')`: callgrind's requests.
const CALLGRIND_BASE: u64 = ((b'C' as u64) << 24) | ((b'T' as u64) << 16);
/// `VG_USERREQ__ZERO_STATS`.
const ZERO_STATS: u64 = CALLGRIND_BASE + 1;
/// `VG_USERREQ__DUMP_STATS_AT`.
const DUMP_STATS_AT: u64 = CALLGRIND_BASE + 3;
/// `VG_USERREQ__RUNNING_ON_VALGRIND`.
const RUNNING_ON_VALGRIND: u64 = 0x1001;

/// Issues client request `req` with one argument; returns valgrind's answer, or `default` when
/// the program runs natively.
fn request(default: u64, req: u64, arg: u64) -> u64 {
    let args: [u64; 6] = [req, arg, 0, 0, 0, 0];
    let mut result = default;
    // SAFETY: the sequence rotates rdi by 128 bits in all (no net change) and exchanges rbx
    // with itself; natively it has no effect. Under valgrind it is the client-request marker:
    // valgrind reads the six words at rax (a live local array) and writes its answer to rdx.
    // Nothing else is read or written.
    unsafe {
        core::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") result,
            in("rax") args.as_ptr(),
            inout("rdi") 0u64 => _,
            options(nostack, preserves_flags),
        );
    }
    result
}

/// Whether the program runs under valgrind.
pub fn running() -> bool {
    request(0, RUNNING_ON_VALGRIND, 0) > 0
}

/// Zeroes callgrind's counters (every thread's).
pub fn zero() {
    request(0, ZERO_STATS, 0);
}

/// Writes callgrind's counters since the last zero or dump to a file of their own, tagged with
/// `label` (the file's `desc: Trigger: Client Request: <label>` line).
pub fn dump(label: &str) {
    let c = std::ffi::CString::new(label.replace('\0', " ")).unwrap_or_default();
    request(0, DUMP_STATS_AT, c.as_ptr() as u64);
}

/// Reads the dumps callgrind wrote for `out_file` (`out_file.1`, `.2`, ...): label and
/// instructions (`Ir`) of each.
pub fn read_dumps(out_file: &std::path::Path) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    let Some(dir) = out_file.parent() else {
        return found;
    };
    let stem = out_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&stem) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut label = None;
        let mut total = None;
        for line in text.lines() {
            if let Some(l) = line.strip_prefix("desc: Trigger: Client Request: ") {
                label = Some(l.trim().to_string());
            } else if let Some(v) = line
                .strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
            {
                total = v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
            }
        }
        if let (Some(l), Some(t)) = (label, total) {
            found.push((l, t));
        }
    }
    found
}
