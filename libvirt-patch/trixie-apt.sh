# shellcheck shell=bash
# A private apt configuration for Debian trixie, sourced by the scripts that fetch trixie
# sources or packages (libvirt-patch/get-source.sh, linux/build-kernel.sh). The archive host is
# the one the machine's own Debian sources name; the machine's own apt configuration and dpkg
# state are left untouched: everything apt keeps lives under the directory the caller gives.
#
#   . trixie-apt.sh
#   trixie_apt_setup DIR "deb deb-src"   # write DIR/sources.list for these archive types
#   trixie_apt DIR update                # any apt-get command, with that configuration
#   trixie_apt DIR download PACKAGE      # a binary package into the current directory
#   trixie_deb DIR PACKAGE DEST          # a binary package's .deb into DEST, once per version

trixie_archive_host() {
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

trixie_apt_setup() {
    local dir="$1" types="${2:-deb-src}" uri t
    uri=$(trixie_archive_host)
    mkdir -p "$dir/sources.list.d" "$dir/state/lists/partial" "$dir/cache/archives/partial"
    : > "$dir/sources.list"
    for t in $types; do
        echo "$t [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" \
            >> "$dir/sources.list"
    done
}

trixie_apt() {
    local dir="$1"
    shift
    apt-get -q \
        -o Dir::Etc::SourceList="$dir/sources.list" \
        -o Dir::Etc::SourceParts="$dir/sources.list.d" \
        -o Dir::State="$dir/state" \
        -o Dir::State::status=/var/lib/dpkg/status \
        -o Dir::Cache="$dir/cache" \
        -o APT::Sandbox::User=root \
        "$@"
}

# trixie_deb DIR PACKAGE DEST: fetch PACKAGE's .deb (binary packages only, "deb" archive type)
# into the directory DEST unless it is there already, and print its path. The package lists are
# fetched when there are none yet, and again when the version they name is gone from the archive.
# Callers sharing DIR are serialised with a lock in it.
trixie_deb() {
    local dir="$1" pkg="$2" dest="$3" log="$1/$2.log" deb=""
    mkdir -p "$dir" "$dest"
    (
        flock 9
        if ! grep -qs '^deb ' "$dir/sources.list"; then
            trixie_apt_setup "$dir" deb
        fi
        local try lists
        for try in 1 2; do
            lists=("$dir"/state/lists/*_Packages*)
            if [ "$try" = 2 ] || [ ! -e "${lists[0]}" ]; then
                trixie_apt "$dir" update > "$log" 2>&1 || { cat "$log" >&2; return 1; }
            fi
            deb=$(trixie_apt "$dir" download --print-uris "$pkg" 2>>"$log" | awk 'END { print $2 }')
            [ -n "$deb" ] || continue
            [ -s "$dest/$deb" ] && break
            (cd "$dest" && trixie_apt "$dir" download "$pkg" >> "$log" 2>&1) && [ -s "$dest/$deb" ] && break
            deb=""
        done
        [ -n "$deb" ] || { cat "$log" >&2; echo "$pkg: not fetched from trixie" >&2; return 1; }
        echo "$dest/$deb"
    ) 9>"$dir/.lock"
}
