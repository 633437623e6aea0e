//! Taking the counts: in this process, or in a child under callgrind whose per-operation dumps
//! give the host instructions.

use super::*;

/// Fills the instruction column of `rows` from callgrind dumps: a row's dump is labelled with
/// its id, or `<id>.probe<n>` for rows that are the median of several probes.
pub fn merge_instructions(rows: &mut [CountRow], dumps: &[(String, u64)]) {
    for r in rows.iter_mut() {
        let probe = format!("{}.probe", r.id);
        let found: Vec<f64> = dumps
            .iter()
            .filter(|(l, _)| *l == r.id || l.starts_with(&probe))
            .map(|(_, n)| *n as f64)
            .collect();
        if let (false, Some(v)) = (found.is_empty(), r.values.get_mut(col("instructions"))) {
            *v = Some(Stat::of(&found).median);
        }
    }
}

/// The event-loop period of the counts run: long, so no timer tick lands inside an operation.
const COUNTS_TIMER: Duration = Duration::from_secs(3600);

/// Measures the counts of `part` in this process (no instructions unless it runs under
/// callgrind).
fn in_process(quick: bool, part: Part) -> Res<Vec<CountRow>> {
    let base = if part == Part::Small {
        SMALL_BASE
    } else {
        BASE_SIZE
    };
    let bench = Bench::start_with(Plan::new(quick), Some(COUNTS_TIMER), base)?;
    bench.counts(part)
}

/// `rows` in the order of [`count_rows`].
fn ordered(mut rows: Vec<CountRow>) -> Vec<CountRow> {
    let order = count_rows();
    rows.sort_by_key(|r| order.iter().position(|o| *o == r.id).unwrap_or(usize::MAX));
    rows
}

/// The child's side: measures the counts (under callgrind, which the parent started) and
/// writes them to `dir/counts.json`.
pub fn child(quick: bool, dir: &std::path::Path) -> Res<()> {
    let rows = in_process(quick, Part::Small)?;
    std::fs::write(dir.join("counts.json"), serde_json::to_string(&rows)?)?;
    Ok(())
}

/// Takes the counts as `mode` says; returns the rows and a note on how.
pub fn take(quick: bool, mode: &CountsMode) -> Res<(Vec<CountRow>, String)> {
    let native = |why: &str| -> Res<(Vec<CountRow>, String)> {
        let rows = in_process(quick, Part::All)?;
        Ok((ordered(rows), format!("Host instructions not counted: {why}.")))
    };
    if *mode == CountsMode::InProcess {
        return native("counted only by the bench binary (cargo bench), under callgrind");
    }
    let have = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        return native("valgrind is not installed (apt-get install valgrind)");
    }
    let dir = tempfile_dir()?;
    let out = dir.join("callgrind.out");
    let mut cmd = std::process::Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--dump-instr=no")
        .arg(std::env::current_exe()?)
        .arg("--counts-child")
        .arg(&dir);
    if quick {
        cmd.arg("--quick");
    }
    let status = cmd.stdout(std::process::Stdio::null()).status()?;
    let json = dir.join("counts.json");
    if !status.success() || !json.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        return native(&format!("the callgrind run failed ({status})"));
    }
    let mut rows: Vec<CountRow> = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let dumps = callgrind::read_dumps(&out);
    merge_instructions(&mut rows, &dumps);
    let _ = std::fs::remove_dir_all(&dir);
    let mut large = in_process(quick, Part::Large)?;
    for r in large.iter_mut().filter(|r| r.values.iter().any(Option::is_some)) {
        r.note = format!(
            "{}; measured natively, without instructions: valgrind's address space holds at most \
             32 GiB of mappings",
            r.note
        );
    }
    rows.extend(large);
    Ok((
        ordered(rows),
        "Host instructions: user-space instructions of the whole VMM process (every thread: \
         host control, vCPU exit handling, device, mapper, event loop), counted by valgrind's \
         callgrind (`perf stat -e instructions` is not supported on this host: no PMU in the \
         nested VM). The counts run is a child process under callgrind that zeroes the counters \
         before and dumps them after each operation; the other columns are the same in either \
         run. Operations above 4 GiB run natively (valgrind cannot map 1 TiB), so their \
         instruction column is empty."
            .into(),
    ))
}

/// A fresh private directory for the child's files.
fn tempfile_dir() -> Res<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..1000u32 {
        let d = base.join(format!("tagmem-counts-{}-{i}", std::process::id()));
        if std::fs::create_dir(&d).is_ok() {
            return Ok(d);
        }
    }
    Err("cannot create a temporary directory".into())
}
