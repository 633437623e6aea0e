#!/usr/bin/env bash
# Nested guests with Linux at every level, for a host whose KVM offers nested virtualization:
# tagmem-vmm (L0, this host) boots an L1 Linux guest with a sharable tag backed by a host file;
# L1 claims it, looks it up with the tagmem command and runs tagmem-vmm itself, which boots an
# L2 Linux guest with the same capacity found by tag; L2 claims and looks it up in turn. The run
# passes when L2's answer equals L1's except for what differs by design (device names and paths,
# guest-physical addresses: docs/lookup.md), both levels read the bytes this host wrote, and
# L2's write reaches the host file.
#
#   nested/run.sh [--build-only] [--without-nested] [--work DIR]
#
#   --build-only      build everything (the L1 kernel, the static binaries, both initramfs
#                     images) and stop: what can be checked on a host without nested KVM
#   --without-nested  boot L1 even though this host offers no nested virtualization: L1 then
#                     stops at the KVM step, reporting "NESTED l1 no-kvm" (slow where L1 runs in
#                     KVM's instruction emulator)
#   --work DIR        where the images, binaries and logs go (default: a new temporary directory)
#
# Kernels: L2 runs the CI guest kernel (build-kernel.sh); L1 the same kernel with KVM
# (build-kernel.sh --fragment nested/l1.config). Exit status: 0 passed, 1 failed, 2 this host
# cannot run it (no /dev/kvm, or no nested virtualization without --without-nested).
set -euo pipefail
shopt -s inherit_errexit
here="$(cd "$(dirname "$0")" && pwd)"
linux="$(dirname "$here")"
repo="$(dirname "$linux")"
die() { echo "nested/run.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }

build_only=0
without_nested=0
work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build-only) build_only=1; shift ;;
        --without-nested) without_nested=1; shift ;;
        --work) [ $# -ge 2 ] || die "--work needs a directory"; work="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -n "$work" ] || work=$(mktemp -d /tmp/tagmem-nested.XXXXXX)
mkdir -p "$work"
work="$(cd "$work" && pwd)"

tag=6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee
bytes=HOST-WROTE-these-bytes

log "kernels"
l2_kernel=$(bash "$linux/build-kernel.sh")
l1_kernel=$(bash "$linux/build-kernel.sh" --fragment "$here/l1.config")

log "static binaries: tagmem-vmm, tagmem (x86_64-unknown-linux-gnu, +crt-static), daxmap"
target=x86_64-unknown-linux-gnu
(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --target "$target" \
    --target-dir "$work/target" -p tagmem-vmm-cli --bin tagmem-vmm -p tagmem-lookup --bin tagmem >&2)
bin="$work/target/$target/release"
cc -static -O2 -Wall -o "$work/daxmap" "$linux/tools/daxmap.c"

log "initramfs images"
bash "$linux/build-initramfs.sh" --script "$here/l2-test.sh" \
    --file "$here/common.sh:/lib/nested.sh" --file "$work/daxmap:/bin/daxmap" \
    --file "$bin/tagmem:/bin/tagmem" -o "$work/l2.cpio" > /dev/null
bash "$linux/build-initramfs.sh" --script "$here/l1-test.sh" \
    --file "$here/common.sh:/lib/nested.sh" --file "$work/daxmap:/bin/daxmap" \
    --file "$bin/tagmem:/bin/tagmem" --file "$bin/tagmem-vmm:/bin/tagmem-vmm" \
    --file "$l2_kernel/bzImage:/l2/bzImage" --file "$work/l2.cpio:/l2/initramfs.cpio" \
    -o "$work/l1.cpio" > /dev/null
if [ "$build_only" = 1 ]; then
    echo "built in $work: l1.cpio (L1 kernel $l1_kernel/vmlinux), l2.cpio (L2 kernel $l2_kernel/bzImage)"
    exit 0
fi

[ -c /dev/kvm ] || { echo "nested/run.sh: no /dev/kvm on this host" >&2; exit 2; }
nested=0
for p in /sys/module/kvm_intel/parameters/nested /sys/module/kvm_amd/parameters/nested; do
    [ -r "$p" ] && grep -qE '^(Y|1)$' "$p" && nested=1
done
if [ "$nested" = 0 ] && [ "$without_nested" = 0 ]; then
    echo "nested/run.sh: this host's KVM offers no nested virtualization (kvm_intel or kvm_amd" \
        "with nested=1); L1 would find no /dev/kvm. --without-nested boots L1 anyway." >&2
    exit 2
fi

cmdline="console=ttyS0 reboot=k panic=1 8250.nr_uarts=1"
# Where KVM runs guests in its instruction emulator (kvm_pvm), the kernel needs its workarounds.
if [ -d /sys/module/kvm_pvm ]; then
    cmdline+=" noxsave clearcpuid=cx16,popcnt,smap noint3-selftest nofwait syscall_fault_fixup"
fi
truncate -s 4M "$work/shared.img"
printf '%s' "$bytes" | dd of="$work/shared.img" conv=notrunc status=none
log "L0: tagmem-vmm boots L1 (console: $work/l1.log)"
set +e
timeout "${TAGMEM_NESTED_TIMEOUT:-7200}" "$bin/tagmem-vmm" run --kernel "$l1_kernel/vmlinux" \
    --initramfs "$work/l1.cpio" --memory size=1G \
    --cmdline "$cmdline tagmem.tag=$tag tagmem.expect=$bytes" \
    --tagged-memory "tag=$tag,path=$work/shared.img,size=4M,shared=on,read_latency=250,write_latency=300,read_bandwidth=25000,write_bandwidth=12000" \
    --serial "file=$work/l1.log" > "$work/l0.log" 2>&1
rc=$?
set -e
log "L0: tagmem-vmm exited ($rc)"

fail=0
# check WHAT PATTERN: an extended regular expression the L1 console log must match.
check() {
    if grep -qE -- "$2" "$work/l1.log"; then
        echo "ok    $1"
    else
        echo "FAIL  $1 (no \"$2\" in $work/l1.log)"
        fail=1
    fi
}
if grep -q "NESTED l1 no-kvm" "$work/l1.log"; then
    check "L1 read the host's bytes" "NESTED l1 read data=$bytes"
    grep "NESTED l1 l2-options" "$work/l1.log" || true
    echo "L1 has no /dev/kvm: nothing was nested (see $work/l1.log)"
    exit 2
fi
check "L1 read the host's bytes" "NESTED l1 read data=$bytes"
check "L1's answer has the tag" "NESTED l1 json +\"uuid\": \"$tag\","
check "L1's answer has the host's performance" "NESTED l1 json +\"read_latency_ns\": 250,"
check "L2 read the host's bytes" "NESTED l2 read data=$bytes"
check "L2's answer equals L1's but for names and addresses" "NESTED l1 same-answer ok"
if [ "$(dd if="$work/shared.img" bs=1 skip=4096 count=13 status=none)" = L2-WROTE-this ]; then
    echo "ok    L2's write reached the host file"
else
    echo "FAIL  L2's write did not reach the host file"
    fail=1
fi
grep "NESTED l1 diff" "$work/l1.log" || true
exit "$fail"
