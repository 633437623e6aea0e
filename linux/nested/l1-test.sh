#!/bin/sh
# /test of the nested script's L1 guest (nested/run.sh): the L0 host's tagmem-vmm gave it a
# sharable tag. It claims the tag, looks it up, reads the host's bytes, then runs tagmem-vmm
# itself to boot the L2 guest (/l2/bzImage, /l2/initramfs.cpio) with the same capacity: one L2
# extent per extent of its dax device, found by tag (`--tagged-memory tag=<uuid>,offset=,size=`
# with no path, as on a DCD host), with the same flags and node; tagmem-vmm takes the
# performance and source class from the device. Once L2 is done it compares L2's answer with
# its own. Kernel parameters: tagmem.tag=<uuid>, tagmem.expect=<the host's bytes at offset 0>.
LEVEL=l1
# shellcheck source-path=SCRIPTDIR source=common.sh
. /lib/nested.sh

tag=$(param tag) || { say error no tagmem.tag= on the command line; exit 1; }
expect=$(param expect) || expect=""
say up kernel="$(uname -r)"
wait_for has_tag "$tag" || { say error no extent with tag "$tag" arrived; exit 1; }
dev=$(claim "$tag") || { say error claiming "$tag" failed; exit 1; }
say claimed dev="$dev"
lookup_json "$tag" /tmp/l1.json || { say error tagmem lookup failed; exit 1; }
say read data="$(daxmap "/dev/$dev" read 0 "${#expect}" 2>&1)"

# One --tagged-memory per mapping of the device, in mapping order (so sequence numbers follow),
# with the flags of the tag's extents and the device's node.
v=$(tagged_vdev)
shared=off
readonly=off
for e in "$v"/tagmem/extent*; do
    [ "$(cat "$e/uuid")" = "$tag" ] || continue
    read -r flags < "$e/flags"
    for f in $flags; do
        [ "$f" = sharable ] && shared=on
        [ "$f" = readonly ] && readonly=on
    done
done
node=$(cat "/sys/bus/dax/devices/$dev/target_node")
set --
i=0
while [ -d "/sys/bus/dax/devices/$dev/mapping$i" ]; do
    m=/sys/bus/dax/devices/$dev/mapping$i
    start=$(cat "$m/start")
    end=$(cat "$m/end")
    pgoff=$(cat "$m/page_offset")
    set -- "$@" --tagged-memory \
        "tag=$tag,offset=$((pgoff * 4096)),size=$((end - start + 1)),shared=$shared,readonly=$readonly,node=$node"
    i=$((i + 1))
done
say l2-options "$@"

if [ ! -c /dev/kvm ]; then
    say no-kvm "this L1 kernel has no /dev/kvm: the host gives its guests no VMX/SVM (no nested virtualization)"
    exit 2
fi
say l2-boot
tagmem-vmm run --kernel /l2/bzImage --initramfs /l2/initramfs.cpio --memory size=256M \
    --cmdline "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 tagmem.tag=$tag tagmem.expect=$expect" \
    "$@" > /tmp/l2.log 2>&1
rc=$?
# L2's console, for the record (its lines starting with "NESTED l2" are its reports).
cat /tmp/l2.log
say l2-exit rc=$rc

sed -n 's/^NESTED l2 json //p' /tmp/l2.log > /tmp/l2.json
normalized /tmp/l1.json > /tmp/l1.norm
normalized /tmp/l2.json > /tmp/l2.norm
if [ -s /tmp/l2.norm ] && diff /tmp/l1.norm /tmp/l2.norm > /tmp/diff 2>&1; then
    say same-answer ok
else
    say same-answer differs
    while IFS= read -r line; do say diff "$line"; done < /tmp/diff
fi
# L2's write reached the L1 device (the same pages as the host's file).
say l2-write data="$(daxmap "/dev/$dev" read 0x1000 13 2>&1)"
say finished
