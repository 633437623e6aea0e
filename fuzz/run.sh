#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time on its committed seeds (seeds/<target>)
# plus a working corpus (corpus/<target>, not committed); fails if any target finds a crash,
# a timeout or an out-of-memory input. Used by .ci/run and by developers:
#
#   fuzz/run.sh                 every target for 60 s
#   fuzz/run.sh 600 device sysfs   the named targets for 10 minutes each
#
# A target with a dictionary of its keywords (dict/<target>.dict) runs with it.
#
# Targets run FUZZ_JOBS at a time (default: the number of CPUs), each on one core. Crashing
# inputs land in artifacts/<target>/; logs and a summary (executions, coverage, corpus) in logs/.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-60}
shift || true
jobs=${FUZZ_JOBS:-$(nproc)}

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

start=$(date +%s)
cargo fmt --manifest-path Cargo.toml -- --check
echo "== cargo fuzz build (${#targets[@]} targets)"
cargo +nightly fuzz build
echo "   built in $(( $(date +%s) - start )) s"

mkdir -p logs
run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    # -timeout: an input running longer than 10 s is a hang; -rss_limit_mb: 2 GiB is a leak.
    local dict=()
    [ -f "dict/$t.dict" ] && dict=(-dict="dict/$t.dict")
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "${dict[@]}" >"logs/$t.log" 2>&1
}

failed=()
pids=()
names=()
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    echo "== fuzz $t for ${secs} s"
    run_one "$t" &
    pids+=($!)
    names+=("$t")
done
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        failed+=("${names[$i]}")
    fi
done

summary=logs/summary.txt
printf '%-14s %14s %10s %8s %8s %14s\n' target executions exec/s cov ft corpus >"$summary"
for t in "${targets[@]}"; do
    log=logs/$t.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*(cov|ft):' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
    printf '%-14s %14s %10s %8s %8s %14s\n' "$t" "${execs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "${corp:--}" >>"$summary"
done
cat "$summary"
echo "== fuzzing done in $(( $(date +%s) - start )) s"

if [ ${#failed[@]} -gt 0 ]; then
    for t in "${failed[@]}"; do
        echo "!! $t failed; the end of logs/$t.log:"
        tail -40 "logs/$t.log"
    done
    echo "!! fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
