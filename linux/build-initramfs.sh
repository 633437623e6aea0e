#!/usr/bin/env bash
# Build the test initramfs: Debian trixie's busybox-static, the /init of initramfs/init, an
# optional test script that /init runs, and any extra files (modules, static binaries).
#
#   build-initramfs.sh [--script FILE] [--file SRC[:DEST]]... [--gzip] [-o OUT]
#
#   --script FILE      installed as /test; /init runs it and ends the VM (no script: a shell)
#   --file SRC[:DEST]  copies SRC (a file or a directory) to DEST in the image (default:
#                      /SRC's basename); repeatable
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
files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --script) [ $# -ge 2 ] || die "--script needs a file"; script="$2"; shift 2 ;;
        --file) [ $# -ge 2 ] || die "--file needs SRC[:DEST]"; files+=("$2"); shift 2 ;;
        --gzip) gzip=1; shift ;;
        -o) [ $# -ge 2 ] || die "-o needs a file"; out="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -z "$script" ] || [ -f "$script" ] || die "--script: no such file: $script"

for tool in cpio gzip dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install cpio gzip dpkg)"
done

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
