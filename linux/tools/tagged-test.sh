#!/bin/sh
# In-guest half of the tagged virtio-mem Linux tests, run as /test by the initramfs's /init,
# with daxmap (linux/tools/daxmap.c) at /bin/daxmap and, where the image has them, Debian's
# daxctl and the tagmem lookup command (build-initramfs.sh --daxctl). It reports what the guest sees and serves
# the commands the host types on the serial console, one per line. Every line meant for the host
# starts with "TAGMEM ". Waits are hang guards (polls of sysfs), not timings.
#
#   extents N             wait until the device lists N accepted extents; report their ids
#   extent E              report tagmem/extentE/ (uuid, start, length, flags, source, seq,
#                         target_node, poison, access1 values)
#   gone E                wait until extent E is gone; report the dax devices left
#   claim TAG|0 [daxctl]  write TAG to the region's seed's uuid, bind the device to device_dax
#                         (through sysfs, or with `daxctl enable-device`); report the device,
#                         its uuid, size, target_node and mappings
#   json PROG ARGS...     run PROG (tagmem, daxctl); send each line it prints as
#                         "TAGMEM json <line>" (stderr: "TAGMEM json-err <line>"), then
#                         "TAGMEM json-end rc=<exit status>"
#   read DEV OFF LEN      LEN bytes at OFF through an mmap of /dev/DEV, as text
#   write DEV OFF TEXT    write TEXT at OFF through a shared writable mapping
#   tryrw DEV             a writable mapping, and a write through a read-only one
#   hold DEV | unhold     keep /dev/DEV mapped (in the background) | end that
#   kmem DEV              try to online DEV as System RAM (bind it to dax_kmem)
#   region                report the dax region (id, size, available_size, seed) and devices
#   unbind | bind         unbind or bind the virtio_mem driver of the tagged device
#   end                   leave (/init then resets the VM)

say() { echo "TAGMEM $*"; }

vdev=""
for d in /sys/bus/virtio/devices/*; do
    [ -e "$d/device" ] || continue
    [ "$(cat "$d/device")" = 0x0018 ] && vdev=$d
done
say kernel release=$(uname -r)
if [ -z "$vdev" ]; then
    say ready vdev=none
else
    features=$(cat "$vdev/features")
    say ready vdev=${vdev##*/} features=$features tagged=$(echo "$features" | cut -c4)
fi

# Polls until "$@" succeeds, at most ~1800 times (a hang guard).
wait_for() {
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        [ "$tries" -ge 1800 ] && return 1
        sleep 1
    done
}

# Shell expansions rather than sed: fewer programs to go wrong under an instruction emulator.
# Joins its arguments with commas.
join() {
    out=""
    for w in "$@"; do out="$out${out:+,}$w"; done
    echo "$out"
}
ids() {
    set --
    for d in "$vdev"/tagmem/extent*; do
        [ -d "$d" ] && set -- "$@" "${d##*/extent}"
    done
    join "$@"
}
nr_extents() {
    n=0
    for d in "$vdev"/tagmem/extent*; do
        [ -d "$d" ] && n=$((n + 1))
    done
    echo "$n"
}
has_extents() { [ "$(nr_extents)" -eq "$1" ]; }
region() { echo "$vdev/dax_region"; }
devices() {
    set --
    for d in /sys/bus/dax/devices/*; do
        [ -e "$d" ] && set -- "$@" "${d##*/}"
    done
    join "$@"
}
# The words of file $1, joined with commas.
word() {
    read -r line < "$1"
    # shellcheck disable=SC2086
    join $line
}

holder=""
while read -r cmd a b c; do
    case "$cmd" in
        extents)
            wait_for has_extents "$a"
            say extents n=$(nr_extents) ids=$(ids)
            ;;
        extent)
            e=$vdev/tagmem/extent$a
            if [ -d "$e" ]; then
                poison=""
                while read -r off len; do
                    [ -n "$off" ] && poison="$poison${poison:+;}$off+$len"
                done < "$e/poison"
                perf=""
                for p in read_latency write_latency read_bandwidth write_bandwidth; do
                    [ -r "$e/access1/$p" ] && perf="$perf $p=$(cat "$e/access1/$p")"
                done
                say extent id=$a uuid=$(cat "$e/uuid") start=$(cat "$e/start") \
                    length=$(cat "$e/length") flags=$(word "$e/flags") source=$(cat "$e/source") \
                    seq=$(cat "$e/seq") target_node=$(cat "$e/target_node") poison=${poison:-none}$perf
            else
                say extent id=$a missing=1
            fi
            ;;
        gone)
            wait_for test ! -d "$vdev/tagmem/extent$a"
            say gone id=$a devices=$(devices) ids=$(ids)
            ;;
        claim)
            seed=$(cat "$(region)/seed")
            if echo "$a" > "/sys/bus/dax/devices/$seed/uuid"; then
                rc=0
                if [ "$b" = daxctl ]; then
                    daxctl enable-device "$seed" > /tmp/enable.out 2>&1 || rc=bind
                else
                    echo "$seed" > /sys/bus/dax/drivers/device_dax/bind || rc=bind
                fi
            else
                rc=claim
            fi
            dev=/sys/bus/dax/devices/$seed
            maps=""
            for m in "$dev"/mapping*; do
                [ -d "$m" ] && maps="$maps${maps:+,}$(cat "$m/start")-$(cat "$m/end")@$(cat "$m/page_offset")"
            done
            say claim rc=$rc dev=$seed uuid=$(cat "$dev/uuid") size=$(cat "$dev/size") \
                target_node=$(cat "$dev/target_node" 2>/dev/null) mappings=${maps:-none} \
                seed=$(cat "$(region)/seed") chardev=$([ -c "/dev/$seed" ] && echo yes || echo no)
            ;;
        json)
            # shellcheck disable=SC2086
            "$a" $b $c > /tmp/json.out 2> /tmp/json.err
            rc=$?
            while IFS= read -r line; do say json "$line"; done < /tmp/json.out
            while IFS= read -r line; do say json-err "$line"; done < /tmp/json.err
            say json-end rc=$rc
            ;;
        read)
            say read data=$(daxmap "/dev/$a" read "$b" "$c" 2>&1 | tr ' ' '_')
            ;;
        write)
            daxmap "/dev/$a" write "$b" "$c" > /dev/null 2>&1
            say write rc=$?
            ;;
        tryrw)
            say tryrw $(daxmap "/dev/$a" tryrw 2>&1)
            ;;
        hold)
            rm -f /tmp/hold
            mkfifo /tmp/hold
            daxmap "/dev/$a" hold < /tmp/hold > /tmp/hold.out 2>&1 &
            holder=$!
            exec 7> /tmp/hold
            wait_for grep -q held /tmp/hold.out
            say hold pid=$holder $(cat /tmp/hold.out | tr '\n' ' ')
            ;;
        unhold)
            echo > /tmp/hold
            exec 7>&-
            wait "$holder"
            say unhold rc=$?
            ;;
        kmem)
            echo "$a" > /sys/bus/dax/drivers/kmem/new_id 2>/dev/null
            if echo "$a" > /sys/bus/dax/drivers/kmem/bind 2>/dev/null; then rc=0; else rc=refused; fi
            echo "$a" > /sys/bus/dax/drivers/kmem/remove_id 2>/dev/null
            say kmem dev=$a rc=$rc driver=$(basename "$(readlink "/sys/bus/dax/devices/$a/driver" 2>/dev/null)" 2>/dev/null)
            ;;
        region)
            r=$(region)
            say region id=$(cat "$r/id") size=$(cat "$r/size") available=$(cat "$r/available_size") \
                seed=$(cat "$r/seed") devices=$(devices) ids=$(ids)
            ;;
        unbind)
            echo "${vdev##*/}" > /sys/bus/virtio/drivers/virtio_mem/unbind
            say unbind rc=$? devices=$(devices)
            ;;
        bind)
            echo "${vdev##*/}" > /sys/bus/virtio/drivers/virtio_mem/bind
            say bind rc=$?
            ;;
        end)
            say end
            exit 0
            ;;
        *)
            say unknown cmd=$cmd
            ;;
    esac
done
