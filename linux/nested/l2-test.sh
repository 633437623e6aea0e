#!/bin/sh
# /test of the nested script's L2 guest (nested/run.sh), booted by tagmem-vmm inside the L1
# guest: it finds the tag L1 passed on, claims it, looks it up with the tagmem command, reads the
# bytes the L0 host wrote and writes some of its own. Kernel parameters: tagmem.tag=<uuid>,
# tagmem.expect=<the host's bytes at offset 0>.
LEVEL=l2
# shellcheck source-path=SCRIPTDIR source=common.sh
. /lib/nested.sh

tag=$(param tag) || { say error no tagmem.tag= on the command line; exit 1; }
expect=$(param expect) || expect=""
say up kernel="$(uname -r)"
wait_for has_tag "$tag" || { say error no extent with tag "$tag" arrived; exit 1; }
dev=$(claim "$tag") || { say error claiming "$tag" failed; exit 1; }
say claimed dev="$dev"
lookup_json "$tag" /tmp/l2.json || { say error tagmem lookup failed; exit 1; }
say read data="$(daxmap "/dev/$dev" read 0 "${#expect}" 2>&1)"
daxmap "/dev/$dev" write 0x1000 L2-WROTE-this > /dev/null 2>&1
say write rc=$?
say finished
