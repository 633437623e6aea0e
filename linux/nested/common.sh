# shellcheck shell=sh
# Shared by l1-test.sh and l2-test.sh (installed as /lib/nested.sh): what a guest does to find
# tagged capacity by tag, as on a CXL DCD host. Each level sets LEVEL (l1, l2) before sourcing.

say() { echo "NESTED $LEVEL $*"; }

# The value of tagmem.NAME=VALUE on the kernel command line.
param() {
    read -r cmdline < /proc/cmdline
    for arg in $cmdline; do
        case "$arg" in tagmem."$1"=*) echo "${arg#*=}"; return 0 ;; esac
    done
    return 1
}

# Polls until "$@" succeeds, at most ~1800 times (a hang guard, not a timing).
wait_for() {
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        [ "$tries" -ge 1800 ] && return 1
        sleep 1
    done
}

# The virtio-mem device that negotiated tagged extents (it has a tagmem/ directory).
tagged_vdev() {
    for d in /sys/bus/virtio/devices/*; do
        [ -d "$d/tagmem" ] && { echo "$d"; return 0; }
    done
    return 1
}

# True once the device lists an accepted extent carrying tag $1.
has_tag() {
    v=$(tagged_vdev) || return 1
    for e in "$v"/tagmem/extent*; do
        [ -f "$e/uuid" ] && [ "$(cat "$e/uuid")" = "$1" ] && return 0
    done
    return 1
}

# Claims tag $1 as `daxctl create-device -r regionX --uuid $1` does (the tag to the seed's
# uuid, then the device bound to device_dax); prints the device's name.
claim() {
    v=$(tagged_vdev) || return 1
    seed=$(cat "$v/dax_region/seed")
    echo "$1" > "/sys/bus/dax/devices/$seed/uuid" || return 1
    echo "$seed" > /sys/bus/dax/drivers/device_dax/bind || return 1
    echo "$seed"
}

# `tagmem lookup $1 --json` into file $2, each line also sent as "NESTED <level> json <line>".
lookup_json() {
    tagmem lookup "$1" --json > "$2" || return 1
    while IFS= read -r line; do say json "$line"; done < "$2"
    say json-end
}

# The answer without what differs between levels by design (docs/lookup.md): device names and
# paths, and the guest-physical addresses of mappings and extents.
normalized() {
    grep -v -e '"chardev"' -e '"path"' -e '"start"' -e '"end"' "$1"
}
