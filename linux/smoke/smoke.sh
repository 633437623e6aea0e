#!/bin/sh
# In-guest smoke test (run by /init): system calls, /proc, /sys, and an out-of-tree module.
# Each check prints "tagmem-check: <name> ok|FAIL <detail>"; the exit status is the number of
# failures.
fails=0
check() {
    name="$1"
    shift
    if out=$("$@" 2>&1); then
        echo "tagmem-check: $name ok $(echo "$out" | head -n1)"
    else
        echo "tagmem-check: $name FAIL $(echo "$out" | tail -n1)"
        fails=$((fails + 1))
    fi
}

check uname uname -srm
check meminfo grep MemTotal /proc/meminfo
check virtio-bus ls /sys/bus/virtio/drivers
check virtio-devices sh -c 'ls /sys/bus/virtio/devices | tr "\n" " "; true'
check memory-blocks sh -c 'ls -d /sys/devices/system/memory/memory* | wc -l'
check dax-bus ls /sys/bus/dax
check insmod insmod /lib/modules/hello.ko
check module-loaded grep -q '^hello ' /proc/modules
check rmmod rmmod hello
check module-messages sh -c 'dmesg | grep "hello: " | tr "\n" " "'
exit "$fails"
