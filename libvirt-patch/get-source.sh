#!/usr/bin/env bash
# Fetch libvirt's source package from Debian trixie into the work tree, through a private apt
# configuration. The archive host is the one the machine's own Debian sources name; the machine's
# own apt configuration is left untouched, and nothing is cached outside this folder.
#
#   get-source.sh            -> prints the path of the unpacked source tree
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
apt_dir="$here/.apt"
work="$here/.work"
version=11.3.0

archive_host() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
        [ -f "$f" ] || continue
        # deb822 "URIs:" lines and one-line "deb URI suite ..." entries
        uri=$(awk '
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i; next }
            $1 == "deb" || $1 == "deb-src" {
                for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break }
            }' "$f" | grep -E '/debian/?$' | head -n1 || true)
        if [ -n "$uri" ]; then
            echo "${uri%/}"
            return 0
        fi
    done
    echo "no Debian archive found in the machine's apt sources" >&2
    return 1
}

setup_apt() {
    local uri
    uri=$(archive_host)
    mkdir -p "$apt_dir/sources.list.d" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
    cat > "$apt_dir/sources.list" <<EOT
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main
EOT
    : > "$apt_dir/state/status"
}

apt_private() {
    apt-get -q \
        -o Dir::Etc::SourceList="$apt_dir/sources.list" \
        -o Dir::Etc::SourceParts="$apt_dir/sources.list.d" \
        -o Dir::State="$apt_dir/state" \
        -o Dir::State::status=/var/lib/dpkg/status \
        -o Dir::Cache="$apt_dir/cache" \
        -o APT::Sandbox::User=root \
        "$@"
}

main() {
    local src="$work/libvirt-$version"
    if [ -f "$src/meson.build" ]; then
        echo "$src"
        return 0
    fi
    setup_apt
    mkdir -p "$work/dl"
    local log="$work/get-source.log"
    apt_private update > "$log" 2>&1 || { cat "$log" >&2; return 1; }
    # apt checks each file it fetches against the signed Sources index; the archive may serve the
    # tarballs without the .dsc, so the tarballs are unpacked directly, as dpkg-source would.
    (cd "$work/dl" && apt_private source --download-only libvirt >> "$log" 2>&1) || true
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
