#!/usr/bin/env bash
# KUnit tests of the tagged virtio-mem series (patches/10-tagged/), under UML: native speed, no
# KVM. The source is the guest kernel's patched tree from build-kernel.sh (built or taken from
# its cache); the UML objects are cached beside it, keyed the same way:
#   ${TAGMEM_CACHE:-/var/cache/tagmem}/linux/kunit-<version>-<key>/
# so a re-run only relinks and runs the tests. Exit status: kunit.py's (non-zero if a test
# fails or the build breaks). The last line reads "virtio_mem_tagged KUnit: N passed, M failed".
set -euo pipefail
shopt -s inherit_errexit
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TAGMEM_CACHE:-/var/cache/tagmem}"
jobs="${TAGMEM_JOBS:-$(nproc)}"

die() { echo "kunit.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3)"

start=$(date +%s)
dest=$("$here/build-kernel.sh")
src="$dest/src"
[ -f "$src/drivers/virtio/.kunitconfig" ] || die "$src has no drivers/virtio/.kunitconfig: is patches/10-tagged/ applied?"
build="$cache/linux/kunit-$(basename "$dest")"
mkdir -p "$build"
echo "== kunit.py run (UML, $build)" >&2
log="$build/run.log"
set +e
python3 "$src/tools/testing/kunit/kunit.py" run \
    --kunitconfig="$src/drivers/virtio/.kunitconfig" \
    --build_dir="$build" --jobs="$jobs" 2>&1 | tee "$log" | grep -E '^\[[0-9:]+\] ' >&2
rc=${PIPESTATUS[0]}
set -e
# "Testing complete. Ran 22 tests: passed: 21, failed: 1"
summary=$(grep -E 'Testing complete\. Ran [0-9]+ tests' "$log" | tail -n1 || true)
total=$(sed -n 's/.* Ran \([0-9]*\) tests.*/\1/p' <<<"$summary")
passed=$(sed -n 's/.*passed: \([0-9]*\).*/\1/p' <<<"$summary")
total=${total:-0}
passed=${passed:-0}
if [ "$rc" -ne 0 ] || [ "$total" -eq 0 ]; then
    tail -n 40 "$log" >&2
fi
echo "   kunit.sh: $(( $(date +%s) - start )) s" >&2
echo "virtio_mem_tagged KUnit: $passed passed, $(( total - passed )) failed"
[ "$total" -gt 0 ] || die "no test ran (log: $log)"
exit "$rc"
