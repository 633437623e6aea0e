//! The benchmark suite (`cargo bench -p tagmem-vmm --bench tagmem`) in its short mode, so it
//! cannot rot: it must complete on real KVM and emit every row of the report, with its JSON and
//! chart. Nothing here is timed. Skips (with a message) when `/dev/kvm` cannot be opened.

#[path = "../benches/suite/mod.rs"]
mod suite;

#[global_allocator]
static ALLOC: suite::alloc::Counting = suite::alloc::Counting;

#[test]
fn quick_benchmark_completes_and_emits_every_row() {
    let out = tempfile::tempdir().expect("temporary directory");
    let options = suite::Options {
        quick: true,
        out_dir: out.path().to_path_buf(),
        counts: suite::CountsMode::InProcess,
        counts_only: false,
    };
    let Some(report) = suite::run(&options).expect("the quick benchmark runs") else {
        return;
    };
    let ids: Vec<&str> = report.rows.iter().map(|r| r.id.as_str()).collect();
    for id in suite::expected_rows() {
        assert!(ids.contains(&id.as_str()), "row {id} missing from the report");
    }
    let counted: Vec<&str> = report.counts.iter().map(|r| r.id.as_str()).collect();
    for id in suite::counts::count_rows() {
        assert!(
            counted.contains(&id.as_str()),
            "count row {id} missing from the report"
        );
    }
    assert!(
        report
            .counts
            .iter()
            .all(|r| r.values.iter().any(Option::is_some) || !r.note.is_empty()),
        "a count row that was not measured must say why"
    );
    assert!(
        report
            .rows
            .iter()
            .filter(|r| matches!(r.status, suite::report::Status::NotRun(_)))
            .all(|r| !r.note.is_empty()),
        "a row that did not run must say why"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("performance.json")).expect("JSON written"),
    )
    .expect("valid JSON");
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(report.rows.len()));
    let svg = std::fs::read_to_string(out.path().join("performance.svg")).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let md = std::fs::read_to_string(out.path().join("performance.md")).expect("document written");
    assert!(md.contains("## Counts per operation") && md.contains("## Goals"));
    assert!(report.table().lines().count() > report.rows.len());
}
