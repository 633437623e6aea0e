#!/bin/sh
# In-guest half of tagmem-vmm's Linux tests (vmm/tests/linux_guest.rs), run as /test by the
# initramfs's /init. It reports what the guest sees, then serves the commands the host types on
# the serial console, one per line. Every line meant for the host starts with "TAGMEM ".
#
#   blocks ADDR SIZE WANT  wait until [ADDR, ADDR+SIZE) has exactly WANT memory blocks, all
#                          online (a block being added or removed is not counted as settled),
#                          then report them with MemTotal (the wait is a hang guard, not a timing)
#   unbind | bind          unbind or bind the virtio_mem driver of the virtio-mem device
#   end                    leave (/init then resets the VM)

say() { echo "TAGMEM $*"; }

mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

mem_dev=""
say kernel release=$(uname -r)
for d in /sys/bus/virtio/devices/*; do
    [ -e "$d" ] || continue
    name=${d##*/}
    driver=none
    [ -e "$d/driver" ] && driver=$(basename "$(readlink "$d/driver")")
    device=$(cat "$d/device")
    # debugfs lists the bits the device offers (one per line); sysfs the negotiated bitstring.
    offered=none
    if [ -r "/sys/kernel/debug/virtio/$name/device_features" ]; then
        offered=$(tr '\n' ',' < "/sys/kernel/debug/virtio/$name/device_features")
    fi
    say virtio name=$name device=$device driver=$driver features=$(cat "$d/features") offered=$offered
    [ "$device" = 0x0018 ] && mem_dev=$name
done

memtotal() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }

# Prints "online present" for the memory blocks of [$1, $1 + $2).
count_blocks() {
    bs=$((0x$(cat /sys/devices/system/memory/block_size_bytes)))
    first=$(($1 / bs))
    last=$((($1 + $2) / bs - 1))
    online=0
    present=0
    i=$first
    while [ "$i" -le "$last" ]; do
        # A block being removed can vanish between a test and a read: count what was read.
        if state=$(cat "/sys/devices/system/memory/memory$i/state" 2>/dev/null); then
            present=$((present + 1))
            [ "$state" = online ] && online=$((online + 1))
        fi
        i=$((i + 1))
    done
    echo "$online $present"
}

say ready mem_device=${mem_dev:-none} memtotal_kb=$(memtotal)
while read -r cmd a b c; do
    case "$cmd" in
        blocks)
            tries=0
            set -- $(count_blocks "$a" "$b")
            while { [ "$1" != "$c" ] || [ "$2" != "$c" ]; } && [ "$tries" -lt 1800 ]; do
                sleep 1
                tries=$((tries + 1))
                set -- $(count_blocks "$a" "$b")
            done
            say blocks online=$1 present=$2 memtotal_kb=$(memtotal)
            ;;
        unbind | bind)
            echo "$mem_dev" > "/sys/bus/virtio/drivers/virtio_mem/$cmd"
            rc=$?
            bound=0
            [ -e "/sys/bus/virtio/devices/$mem_dev/driver" ] && bound=1
            say "$cmd" rc=$rc bound=$bound memtotal_kb=$(memtotal)
            ;;
        end)
            say bye
            exit 0
            ;;
        "") ;;
        *) say error unknown-command=$cmd ;;
    esac
done
say eof
