#!/usr/bin/env bash
# Build the test initramfs: Debian trixie's busybox-static, the /init of initramfs/init, an
# optional test script that /init runs, and any extra files (modules, static binaries).
#
#   build-initramfs.sh [--script FILE] [--file SRC[:DEST]]... [--daxctl] [--kernel DIR]
#                      [--gzip] [-o OUT]
#
#   --script FILE      installed as /test; /init runs it and ends the VM (no script: a shell)
#   --file SRC[:DEST]  copies SRC (a file or a directory) to DEST in the image (default:
#                      /SRC's basename); repeatable
#   --daxctl           Debian trixie's daxctl as /bin/daxctl, with the shared libraries it
#                      loads and the dynamic loader (~10 MiB: the guest unpacks it slowly when
#                      it runs in an instruction emulator)
#   --kernel DIR       a build-kernel.sh result: its modules.builtin index under
#                      /lib/modules/<release>/, so that libkmod (daxctl enable-device) knows
#                      which drivers are built in
#   --gzip             compress the image (smaller, but the guest spends longer unpacking it
#                      when it runs in an instruction emulator)
#   -o OUT             where to write the cpio archive (default: a file in the cache named by
#                      the contents' hash)
#
# Prints the path of the image on stdout. Everything fetched is cached under
# ${TAGMEM_CACHE:-/var/cache/tagmem} (outside the checkout).
set -euo pipefail
shopt -s inherit_errexit
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TAGMEM_CACHE:-/var/cache/tagmem}"
apt_dir="$cache/apt"

# shellcheck source=../libvirt-patch/trixie-apt.sh
. "$here/../libvirt-patch/trixie-apt.sh"

die() { echo "build-initramfs.sh: $*" >&2; exit 1; }

script=""
out=""
gzip=0
daxctl=0
kernel=""
files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --script) [ $# -ge 2 ] || die "--script needs a file"; script="$2"; shift 2 ;;
        --file) [ $# -ge 2 ] || die "--file needs SRC[:DEST]"; files+=("$2"); shift 2 ;;
        --daxctl) daxctl=1; shift ;;
        --kernel) [ $# -ge 2 ] || die "--kernel needs a directory"; kernel="$2"; shift 2 ;;
        --gzip) gzip=1; shift ;;
        -o) [ $# -ge 2 ] || die "-o needs a file"; out="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -z "$script" ] || [ -f "$script" ] || die "--script: no such file: $script"
[ -z "$kernel" ] || [ -f "$kernel/build/modules.builtin" ] \
    || die "--kernel: $kernel is not a build-kernel.sh result (no build/modules.builtin)"

for tool in cpio gzip dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install cpio gzip dpkg)"
done
if [ "$daxctl" = 1 ]; then
    command -v readelf >/dev/null 2>&1 || die "readelf not found (apt-get install binutils)"
fi
if [ -n "$kernel" ]; then
    command -v depmod >/dev/null 2>&1 || [ -x /usr/sbin/depmod ] || [ -x /sbin/depmod ] \
        || die "depmod not found (apt-get install kmod)"
fi

# Debian's busybox-static, fetched and unpacked once per version
busybox_bin() {
    local dir="$cache/busybox" deb
    deb=$(trixie_deb "$apt_dir" busybox-static "$cache/dl")
    local name
    name=$(basename "${deb%.deb}")
    local unpacked="$dir/${name//%3a/_}"
    if [ ! -x "$unpacked/usr/bin/busybox" ]; then
        rm -rf "$unpacked" "$unpacked.tmp"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$unpacked.tmp"
        mv "$unpacked.tmp" "$unpacked"
    fi
    echo "$unpacked/usr/bin/busybox"
}

# The packages daxctl's shared libraries come from (daxctl 81: libdaxctl, libndctl, libkmod with
# libcrypto, libudev, json-c, iniparser, libuuid, glibc), unpacked once per set of versions.
daxctl_packages=(daxctl libdaxctl1 libndctl6 libiniparser4 libjson-c5 libuuid1 libkmod2
                 libssl3t64 libzstd1 zlib1g libudev1 libcap2 libc6)
daxctl_root() {
    local debs=() p
    for p in "${daxctl_packages[@]}"; do
        debs+=("$(trixie_deb "$apt_dir" "$p" "$cache/dl")")
    done
    local dir
    dir="$cache/daxctl/$(for p in "${debs[@]}"; do basename "$p"; done | sha256sum | cut -c1-16)"
    if [ ! -x "$dir/usr/bin/daxctl" ]; then
        rm -rf "$dir" "$dir.tmp"
        mkdir -p "$dir.tmp"
        for p in "${debs[@]}"; do dpkg-deb -x "$p" "$dir.tmp"; done
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# Copies ELF file $2 of the unpacked tree $1 to $3 in the image, then every shared library it
# needs (DT_NEEDED, recursively) to /lib/x86_64-linux-gnu/ and its program interpreter.
add_dynamic() {
    local root="$1" todo=("$1/$2") done_libs=" " f lib found interp
    mkdir -p "$stage$(dirname "$3")" "$stage/lib/x86_64-linux-gnu"
    cp "$root/$2" "$stage$3"
    interp=$(readelf -l "$root/$2" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
    [ -n "$interp" ] || die "$2: no program interpreter"
    [ -e "$root$interp" ] || [ -e "$root/usr$interp" ] || die "$2: no $interp in the packages"
    mkdir -p "$stage$(dirname "$interp")"
    cp -L "$root$interp" "$stage$interp" 2>/dev/null || cp -L "$root/usr$interp" "$stage$interp"
    while [ ${#todo[@]} -gt 0 ]; do
        f="${todo[0]}"
        todo=("${todo[@]:1}")
        for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            case "$done_libs" in *" $lib "*) continue ;; esac
            [ "$lib" = "$(basename "$interp")" ] && continue
            found=""
            for d in usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu; do
                [ -e "$root/$d/$lib" ] && found="$root/$d/$lib" && break
            done
            [ -n "$found" ] || die "$2 needs $lib (by ${f#"$root"/}), which none of the packages (${daxctl_packages[*]}) holds"
            cp -L "$found" "$stage/lib/x86_64-linux-gnu/$lib"
            done_libs+="$lib "
            todo+=("$found")
        done
    done
}

busybox=$(busybox_bin)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,root,etc,lib/modules}
cp "$busybox" "$stage/bin/busybox"
# One link per applet now, so that /init does not spend system calls on it (they are slow when
# the guest runs in an instruction emulator).
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$stage/bin/$applet"
done
install -m 0755 "$here/initramfs/init" "$stage/init"
[ -z "$script" ] || install -m 0755 "$script" "$stage/test"
if [ "$daxctl" = 1 ]; then
    add_dynamic "$(daxctl_root)" usr/bin/daxctl /bin/daxctl
fi
if [ -n "$kernel" ]; then
    release=$(cat "$kernel/build/include/config/kernel.release")
    mods="$stage/lib/modules/$release"
    mkdir -p "$mods"
    for f in modules.builtin modules.builtin.modinfo modules.order; do
        [ -f "$kernel/build/$f" ] && cp "$kernel/build/$f" "$mods/"
    done
    PATH="$PATH:/usr/sbin:/sbin" depmod -b "$stage" "$release" || die "depmod for $release failed"
fi
for f in ${files[@]+"${files[@]}"}; do
    src="${f%%:*}"
    if [ "$src" = "$f" ]; then dest="/$(basename "$src")"; else dest="${f#*:}"; fi
    [ -e "$src" ] || die "--file: no such file: $src"
    mkdir -p "$stage$(dirname "$dest")"
    cp -a "$src" "$stage$dest"
done

# Reproducible: fixed owners and times, sorted names
find "$stage" -exec touch -h -d @0 {} +
img=$(mktemp)
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$img"
suffix=cpio
if [ "$gzip" = 1 ]; then
    gzip -9 -n < "$img" > "$img.gz"
    mv "$img.gz" "$img"
    suffix=cpio.gz
fi
if [ -z "$out" ]; then
    mkdir -p "$cache/initramfs"
    out="$cache/initramfs/$(sha256sum "$img" | cut -c1-16).$suffix"
fi
# Replace the output in one step, so a guest booting the old image at the same time keeps it
tmp_out=$(mktemp "$out.XXXXXX")
cat "$img" > "$tmp_out"
rm -f "$img"
chmod 0644 "$tmp_out"
mv -f "$tmp_out" "$out"
echo "initramfs: $(( $(stat -c %s "$out") / 1024 )) KiB, busybox $("$busybox" | head -n1 | awk '{print $2}')" >&2
echo "$out"
