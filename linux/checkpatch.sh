#!/usr/bin/env bash
# Run the kernel's scripts/checkpatch.pl --strict on every patch of the series (patches/*/) and
# on the C files under smoke/ and tools/ (and tree/, if any), with the checkpatch of the built
# source tree.
#
#   checkpatch.sh [KERNEL_DIR]    KERNEL_DIR: a build-kernel.sh result (default: <cache>/linux/current)
#
# Exits non-zero when checkpatch reports anything. One report is expected and allowed: ENOSYS in
# 0003 (syscall_fault_fixup), where the system call frame gets -ENOSYS as its initial return
# value exactly as entry_SYSCALL_64 and the FRED entry build it; checkpatch's own comment on that
# check says it cannot tell entry code apart.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kdir="${1:-${TAGMEM_CACHE:-/var/cache/tagmem}/linux/current}"
cp="$kdir/src/scripts/checkpatch.pl"
[ -f "$cp" ] || { echo "checkpatch.sh: no $cp (run build-kernel.sh first)" >&2; exit 1; }

status=0
run() {
    local out
    if out=$(perl "$cp" --strict --no-tree --show-types "$@" 2>&1); then
        echo "ok    $(basename "${@: -1}")"
    else
        echo "$out" | grep -E '^(ERROR|WARNING|CHECK):' | sed 's/^/      /'
        if echo "$out" | grep -E '^(ERROR|WARNING|CHECK):' | grep -qv 'WARNING:ENOSYS:' \
            || ! [[ "$(basename "${@: -1}")" == 0003-x86-fault-* ]]; then
            echo "FAIL  $(basename "${@: -1}")"
            status=1
        else
            echo "ok    $(basename "${@: -1}") (the expected ENOSYS report)"
        fi
    fi
}

for p in "$here"/patches/*/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -f "$p" ] || continue
    case "$(basename "$p")" in 0000-*) continue ;; esac
    run "$p"
done
while IFS= read -r f; do
    run -f "$f"
done < <(find "$here/smoke" "$here/tree" "$here/tools" -name '*.[ch]' 2>/dev/null | sort)
exit "$status"
