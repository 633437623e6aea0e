#!/usr/bin/env bash
# Fetch libvirt's source package from Debian trixie into the work tree, through the private apt
# configuration of trixie-apt.sh (the machine's own apt configuration is left untouched), kept in
# this folder: nothing is cached outside it.
#
#   get-source.sh            -> prints the path of the unpacked source tree
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
apt_dir="$here/.apt"
work="$here/.work"
version=11.3.0

# shellcheck source=trixie-apt.sh
. "$here/trixie-apt.sh"

main() {
    local src="$work/libvirt-$version"
    if [ -f "$src/meson.build" ]; then
        echo "$src"
        return 0
    fi
    trixie_apt_setup "$apt_dir" deb-src
    mkdir -p "$work/dl"
    local log="$work/get-source.log"
    trixie_apt "$apt_dir" update > "$log" 2>&1 || { cat "$log" >&2; return 1; }
    # apt checks each file it fetches against the signed Sources index; the archive may serve the
    # tarballs without the .dsc, so the tarballs are unpacked directly, as dpkg-source would.
    (cd "$work/dl" && trixie_apt "$apt_dir" source --download-only libvirt >> "$log" 2>&1) || true
    local orig debian
    orig=$(ls "$work/dl"/libvirt_"$version".orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -n1)
    debian=$(ls "$work/dl"/libvirt_"$version"-*.debian.tar.* 2>/dev/null | head -n1)
    if [ -z "$orig" ] || [ -z "$debian" ]; then
        cat "$log" >&2
        echo "libvirt $version source not found in trixie" >&2
        return 1
    fi
    echo "fetched $(basename "$orig") and $(basename "$debian") from trixie" >&2
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xf "$orig" -C "$src.tmp" --strip-components=1
    tar -xf "$debian" -C "$src.tmp"
    # Debian's patches (quilt series), in order
    local p
    while read -r p; do
        p="${p%%#*}"; p="${p%% *}"
        [ -n "$p" ] || continue
        patch -d "$src.tmp" -p1 -s -N < "$src.tmp/debian/patches/$p" >&2
    done < "$src.tmp/debian/patches/series"
    mv "$src.tmp" "$src"
    echo "$src"
}

main "$@"
