//! `cargo bench -p tagmem-vmm --bench tagmem [-- --quick | --counts-only | --no-docs]`: the
//! tagmem benchmark suite on real KVM (see `suite`). Prints the counts and the table; a full run
//! writes `performance.md`, the raw numbers as JSON and the chart as SVG into `docs/` (into
//! `target/tagmem-bench/` with `--no-docs`, in quick mode, or with `--counts-only`). `--quick`
//! (or `TAGMEM_BENCH_QUICK=1`) runs few iterations at small sizes; `--linux-only` runs and
//! prints only the Linux-guest rows (`suite::linux`), writing nothing.

mod suite;

use std::path::PathBuf;

#[global_allocator]
static ALLOC: suite::alloc::Counting = suite::alloc::Counting;

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick") || env_flag("TAGMEM_BENCH_QUICK");
    let docs = !args.iter().any(|a| a == "--no-docs");
    if let Some(i) = args.iter().position(|a| a == "--counts-child") {
        // The counts run under callgrind that `suite::counts::take` starts.
        let dir = args.get(i + 1).map(PathBuf::from).unwrap_or_default();
        if let Err(e) = suite::counts::run::child(quick, &dir) {
            eprintln!("tagmem benchmark counts run failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.iter().any(|a| a == "--linux-only") {
        if tagmem_test_support::kvm_or_skip() {
            let mut rep = suite::report::Report::default();
            let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tagmem-bench-linux");
            suite::linux::rows(&mut rep, false, &tmp);
            println!("{}\n{}", suite::counts::text(&rep.counts), rep.table());
        }
        return;
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .map_or_else(|| manifest.join(".."), PathBuf::from);
    let counts_only = args.iter().any(|a| a == "--counts-only");
    let out_dir = if docs && !quick && !counts_only {
        root.join("docs")
    } else {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("tagmem-bench")
    };
    let options = suite::Options {
        quick,
        out_dir,
        counts: suite::CountsMode::Callgrind,
        counts_only,
    };
    match suite::run(&options) {
        Ok(_) => {}
        Err(e) => {
            eprintln!("tagmem benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
