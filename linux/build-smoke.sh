#!/usr/bin/env bash
# Build the smoke-test initramfs for a built kernel: hello.ko (smoke/hello) compiled against the
# kernel's build tree, and smoke/smoke.sh as the test /init runs.
#
#   build-smoke.sh [KERNEL_DIR]   KERNEL_DIR: a build-kernel.sh result (default: <cache>/linux/current)
#
# Writes KERNEL_DIR/smoke-initramfs.cpio and prints its path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kdir="$(cd "${1:-${TAGMEM_CACHE:-/var/cache/tagmem}/linux/current}" && pwd -P)"
[ -f "$kdir/done" ] || { echo "build-smoke.sh: $kdir is not a built kernel (run build-kernel.sh)" >&2; exit 1; }

work=$(mktemp -d "$kdir/smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$here/smoke/hello" "$work/hello"
make -s -C "$kdir/build" M="$work/hello" modules >&2
"$here/build-initramfs.sh" --script "$here/smoke/smoke.sh" \
    --file "$work/hello/hello.ko:/lib/modules/hello.ko" -o "$kdir/smoke-initramfs.cpio"
