#!/usr/bin/env bash
# Build the guest kernel of tagmem's Linux tests: Debian trixie's linux-source-6.12, the patch
# series under patches/ (in directory order), the files under tree/ (if any) copied over the
# source, and a config made from `make tinyconfig` plus the fragments config/*.config (in name
# order: guest.config first, then what a patch series needs, e.g. tagged.config).
#
#   build-kernel.sh              -> prints the result directory (see below) on stdout
#   build-kernel.sh --print-key  -> prints the cache key only (fetches the package if needed)
#   build-kernel.sh --fragment F -> the same kernel with config fragment F merged last (repeatable;
#                                   e.g. nested/l1.config), a result of its own that does not
#                                   become <cache>/linux/current
#   build-kernel.sh --base       -> the kernel without the tagged series (patches/10-tagged/,
#                                   config/tagged.config): Linux's own virtio_mem, the peer of the
#                                   base protocol's test; a result of its own, like --fragment
#
# The result is cached outside the checkout, keyed by source version + config + patches + tree +
# compiler, in ${TAGMEM_CACHE:-/var/cache/tagmem}/linux/<version>-<key>/:
#   vmlinux  bzImage  config  System.map  Module.symvers   the kernel and what came with it
#   src/     the patched source (no objects; usable for other builds with O=, e.g. ARCH=um)
#   build/   the object tree (out-of-tree modules: make -C <dir>/build M=<module dir>)
#   info     what went in, and the time of each step
# <cache>/linux/current points at the newest result built without --fragment. A re-run with the same inputs prints the
# cached result; an interrupted build resumes. TAGMEM_JOBS overrides make's -j (default: CPUs).
set -euo pipefail
shopt -s inherit_errexit
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TAGMEM_CACHE:-/var/cache/tagmem}"
apt_dir="$cache/apt"
package=linux-source-6.12
jobs="${TAGMEM_JOBS:-$(nproc)}"
# Config fragments, guest.config first, then the others in name order
mapfile -t fragments < <(echo "$here/config/guest.config";
    find "$here/config" -maxdepth 1 -name '*.config' ! -name guest.config | LC_ALL=C sort)
# Bump when the steps below change what they produce from the same inputs.
recipe=2

# shellcheck source=../libvirt-patch/trixie-apt.sh
. "$here/../libvirt-patch/trixie-apt.sh"

die() { echo "build-kernel.sh: $*" >&2; exit 1; }
log() { echo "$*" >&2; }

step_name=""
step_start=0
timings=""
step() {
    step_end
    step_name="$1"
    step_start=$(date +%s)
    log "== $step_name"
}
step_end() {
    if [ -n "$step_name" ]; then
        local took=$(( $(date +%s) - step_start ))
        log "   $step_name: ${took} s"
        timings+="$step_name: ${took} s"$'\n'
    fi
    step_name=""
}

print_key=0
base=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --print-key) print_key=1; shift ;;
        --base) base=1; shift ;;
        --fragment)
            [ $# -ge 2 ] || die "--fragment needs a file"
            [ -f "$2" ] || die "--fragment: no such file: $2"
            extra+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")")
            shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
fragments+=(${extra[@]+"${extra[@]}"})
# The tagged series and the config it needs; --base leaves them out.
tagged_series="$here/patches/10-tagged/"
if [ "$base" = 1 ]; then
    kept=()
    for f in "${fragments[@]}"; do
        [ "$f" = "$here/config/tagged.config" ] || kept+=("$f")
    done
    fragments=("${kept[@]}")
fi

# The patch series, in order: patches/<series>/NNNN-*.patch, series in name order; a cover
# letter (0000-*) is not applied.
series_patches() {
    local d p
    for d in "$here"/patches/*/; do
        [ -d "$d" ] || continue
        [ "$base" = 1 ] && [ "$d" = "$tagged_series" ] && continue
        for p in "$d"[0-9][0-9][0-9][0-9]-*.patch; do
            [ -f "$p" ] || continue
            case "$(basename "$p")" in 0000-*) continue ;; esac
            echo "$p"
        done
    done
}

# Host tools the build needs (Debian package names)
needed_packages() {
    local -A tool=([gcc]=gcc [make]=make [flex]=flex [bison]=bison [bc]=bc [lz4]=lz4
                   [xz]=xz-utils [perl]=perl [patch]=patch)
    local t
    for t in "${!tool[@]}"; do
        command -v "$t" >/dev/null 2>&1 || echo "${tool[$t]}"
    done
    [ -f /usr/include/libelf.h ] || echo libelf-dev   # objtool
}

step "host tools"
mapfile -t missing < <(needed_packages | sort -u)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing host packages: ${missing[*]} (apt-get install them)"
    log "   installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

step "fetch $package"
deb=$(trixie_deb "$apt_dir" "$package" "$cache/dl")
version=$(dpkg-deb -f "$deb" Version)
log "   $(basename "$deb")"

mapfile -t patches < <(series_patches)
key=$(
    {
        echo "recipe $recipe"
        echo "package $package $version"
        echo "compiler $(gcc --version | head -n1)"
        for f in "${fragments[@]}"; do echo "config ${f#"$here"/}"; cat "$f"; done
        for p in ${patches[@]+"${patches[@]}"}; do echo "patch ${p#"$here"/}"; cat "$p"; done
        if [ -d "$here/tree" ]; then
            (cd "$here/tree" && find . -type f | LC_ALL=C sort | while read -r f; do
                echo "tree $f"; cat "$f"; done)
        fi
    } | sha256sum | cut -c1-16
)
if [ "$print_key" = 1 ]; then
    step_end
    echo "$key"
    exit 0
fi

top="$cache/linux"
dest="$top/$version-$key"
mkdir -p "$top"
exec 9>"$top/.lock"
flock 9

publish() {
    [ ${#extra[@]} -eq 0 ] && [ "$base" = 0 ] || return 0
    ln -sfn "$(basename "$dest")" "$top/current.tmp"
    mv -T "$top/current.tmp" "$top/current"
}

if [ -f "$dest/done" ]; then
    step_end
    log "== cached: $dest (built $(sed -n 's/^built //p' "$dest/info"))"
    publish
    echo "$dest"
    exit 0
fi
mkdir -p "$dest"
src="$dest/src"
obj="$dest/build"

if [ ! -f "$src/.tagmem-patched" ]; then
    step "unpack"
    rm -rf "$src" "$obj" "$dest/unpack"
    mkdir -p "$dest/unpack"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$package.tar.xz" | tar -xJ -C "$dest/unpack"
    mv "$dest/unpack/$package" "$src"
    rmdir "$dest/unpack"

    step "patch"
    for p in ${patches[@]+"${patches[@]}"}; do
        log "   ${p#"$here"/}"
        patch -d "$src" -p1 -s --forward --fuzz=0 --no-backup-if-mismatch < "$p" >&2 \
            || die "$(basename "$p") does not apply"
    done
    if [ -d "$here/tree" ]; then
        log "   tree/"
        cp -r "$here/tree/." "$src/"
    fi
    touch "$src/.tagmem-patched"
fi

kmake() { make -C "$src" O="$obj" ARCH=x86_64 "$@"; }

step "configure"
mkdir -p "$obj"
kmake tinyconfig > "$dest/config.log" 2>&1 || { cat "$dest/config.log" >&2; die "tinyconfig failed"; }
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" >> "$dest/config.log" 2>&1 \
    || { cat "$dest/config.log" >&2; die "merge_config.sh failed"; }
kmake olddefconfig >> "$dest/config.log" 2>&1 || { cat "$dest/config.log" >&2; die "olddefconfig failed"; }
# Every line of every fragment must hold in the final config (Kconfig drops what it cannot set)
bad=0
for fragment in "${fragments[@]}"; do
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        name=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        got=$(sed -n "s/^$name=//p" "$obj/.config")
        if [ "$got" != "$want" ]; then
            log "   $name: wanted $want, got ${got:-not set}"
            bad=1
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        name=${BASH_REMATCH[1]}
        if got=$(grep -E "^$name=" "$obj/.config"); then
            log "   $name: wanted not set, got $got"
            bad=1
        fi
    fi
done < "$fragment"
done
[ "$bad" = 0 ] || die "a config fragment does not hold in the final .config (see above; missing dependencies?)"
log "   $(grep -c '=y$' "$obj/.config") options =y"

step "make -j$jobs bzImage modules"
if ! kmake -j"$jobs" bzImage modules > "$dest/build.log" 2>&1; then
    tail -n 40 "$dest/build.log" >&2
    die "kernel build failed (log: $dest/build.log)"
fi
grep -E '(^|[^A-Za-z])(warning|error):' "$dest/build.log" >&2 || true

step "collect"
cp "$obj/vmlinux" "$obj/System.map" "$obj/Module.symvers" "$dest/"
cp "$obj/arch/x86/boot/bzImage" "$dest/bzImage"
cp "$obj/.config" "$dest/config"
step_end
{
    echo "package $package $version ($(basename "$deb"))"
    echo "key $key (recipe $recipe)"
    echo "compiler $(gcc --version | head -n1)"
    for p in ${patches[@]+"${patches[@]}"}; do echo "patch ${p#"$here"/}"; done
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with -j$jobs on $(nproc) CPUs"
    printf '%s' "$timings"
} > "$dest/info"
touch "$dest/done"
publish
log "== kernel $(cat "$obj/include/config/kernel.release"): $dest"
log "   vmlinux $(( $(stat -c %s "$dest/vmlinux") / 1024 )) KiB, bzImage $(( $(stat -c %s "$dest/bzImage") / 1024 )) KiB"
echo "$dest"
