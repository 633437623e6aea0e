#!/usr/bin/env bash
# CI step for the libvirt series: get libvirt 11.3.0 from Debian trixie (get-source.sh),
# apply the series, build libvirt with the Cloud Hypervisor driver and only what its tests
# need, run chxml2xmltest, chxml2jsontest and virschematest, check the JSON the driver
# builds against the Cloud Hypervisor patch's OpenAPI schemas, and validate every XML
# example in docs/ with virt-xml-validate and the patched schema.
#
# Everything it fetches or builds stays under libvirt-patch/.work (git-ignored).
set -euo pipefail

start=$(date +%s)
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/.." && pwd)"
work="$here/.work/ci"
src="$work/libvirt"
build="$work/build"
logs="$work/logs"

# Build dependencies of a minimal libvirt with the ch driver (from debian/control,
# trimmed to what -Ddriver_ch=enabled and the tests below use), and the tools of the
# checks.
deps=(gcc meson ninja-build pkg-config perl xsltproc libxml2-utils
      libglib2.0-dev libxml2-dev libgnutls28-dev libjson-c-dev libcurl4-gnutls-dev
      libtirpc-dev libnl-3-dev libnl-route-3-dev
      python3 python3-yaml python3-jsonschema libvirt-clients)

missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== libvirt source (Debian trixie)"
orig="$("$here/get-source.sh")"
echo "$orig"

echo "== applying the series"
rm -rf "$work"
mkdir -p "$work" "$logs"
cp -a "$orig" "$src"
rm -rf "$src/debian"
for p in "$here"/[0-9][0-9][0-9][0-9]-*.patch; do
    echo "   $(basename "$p")"
    patch -d "$src" -p1 -s --forward --fuzz=0 --no-backup-if-mismatch < "$p"
done

echo "== meson setup"
opts=(
    -Ddriver_ch=enabled -Ddriver_libvirtd=enabled -Ddriver_remote=enabled
    -Djson_c=enabled -Dcurl=enabled -Dlibnl=enabled -Dtests=enabled
    -Ddocs=disabled -Dexpensive_tests=disabled -Dnls=disabled -Dgit_werror=disabled
    -Dinit_script=none
    -Ddriver_qemu=disabled -Ddriver_lxc=disabled -Ddriver_libxl=disabled
    -Ddriver_bhyve=disabled -Ddriver_esx=disabled -Ddriver_hyperv=disabled
    -Ddriver_interface=disabled -Ddriver_network=disabled -Ddriver_openvz=disabled
    -Ddriver_secrets=disabled -Ddriver_test=disabled -Ddriver_vbox=disabled
    -Ddriver_vmware=disabled -Ddriver_vz=disabled
    -Dsecdriver_apparmor=disabled -Dsecdriver_selinux=disabled -Dapparmor=disabled
    -Dselinux=disabled -Dapparmor_profiles=disabled
    -Dstorage_dir=disabled -Dstorage_disk=disabled -Dstorage_fs=disabled
    -Dstorage_gluster=disabled -Dstorage_iscsi=disabled -Dstorage_iscsi_direct=disabled
    -Dstorage_lvm=disabled -Dstorage_mpath=disabled -Dstorage_rbd=disabled
    -Dstorage_scsi=disabled -Dstorage_vstorage=disabled -Dstorage_zfs=disabled
    -Dattr=disabled -Daudit=disabled -Dbash_completion=disabled -Dblkid=disabled
    -Dcapng=disabled -Dfuse=disabled -Dglusterfs=disabled -Dlibiscsi=disabled
    -Dlibpcap=disabled -Dlibssh=disabled -Dlibssh2=disabled -Dnetcf=disabled
    -Dnumactl=disabled -Dopenwsman=disabled -Dpciaccess=disabled -Dpolkit=disabled
    -Dreadline=disabled -Dsanlock=disabled -Dsasl=disabled -Dudev=disabled
    -Dwireshark_dissector=disabled -Ddtrace=disabled -Dfirewalld=disabled
    -Dfirewalld_zone=disabled -Dhost_validate=disabled -Dlogin_shell=disabled
    -Dnss=disabled -Dnumad=disabled -Dnbdkit=disabled -Dnbdkit_config_default=disabled
    -Dpm_utils=disabled -Dssh_proxy=disabled -Dsysctl_config=disabled
    -Duserfaultfd_sysctl=disabled
)
meson setup "$build" "$src" "${opts[@]}" > "$logs/meson-setup.log" 2>&1 ||
    { tail -n 40 "$logs/meson-setup.log"; exit 1; }
grep -E "^ +ch +: |^ +driver_ch|Cloud-Hypervisor|ch +: " "$logs/meson-setup.log" | head -n 3 || true

echo "== build (only the ch tests and the schema test)"
targets=(tests/chxml2xmltest tests/chxml2jsontest tests/virschematest tests/libchxml2xmlmock.so)
ninja -C "$build" "${targets[@]}" > "$logs/build.log" 2>&1 ||
    { grep -E -A8 "FAILED|error:" "$logs/build.log" | head -n 60; exit 1; }
echo "   compiler warnings: $(grep -c "warning:" "$logs/build.log" || true)"
echo "   built in $(( $(date +%s) - start )) s since the start of this step"

passed=0
failed=0

run_libvirt_test() {
    local t="$1" log="$logs/$1.log" total ok bad rc=0
    (cd "$build/tests" && LC_ALL=C VIR_TEST_VERBOSE=1 "./$t") > "$log" 2>&1 || rc=$?
    total=$(grep -cE '^ *[0-9]+\) ' "$log" || true)
    bad=$(grep -cE 'FAILED$' "$log" || true)
    ok=$((total - bad))
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        bad=1
    fi
    echo "   $t: $ok passed, $bad failed (exit $rc)"
    if [ "$t" != virschematest ] || [ "$bad" -ne 0 ]; then
        sed -E 's/^/     /' "$log" | grep -vE '^\s+TEST: ' | grep -E '\) |FAILED|Expect|Actual' | head -n 60
    fi
    passed=$((passed + ok))
    failed=$((failed + bad))
}

echo "== libvirt tests"
run_libvirt_test chxml2xmltest
run_libvirt_test chxml2jsontest
run_libvirt_test virschematest
echo "   virschematest on the ch test files:"
grep -E 'chxml2xml(in|out)/' "$logs/virschematest.log" |
    sed -E 's#^ *[0-9]+\) Checking .*/tests/#     #; s#(-invalid\.xml) against .*#\1 ... rejected by the schema, as a -invalid file must be#; s# against .*\.\.\. # ... #' |
    sort | head -n 40

echo "== libvirt's driver scripts on the ch driver (ACL checks, driver table names)"
for check in "check-aclrules.py src/remote/remote_protocol.x" "check-driverimpls.py"; do
    name=${check%% *}
    # shellcheck disable=SC2086
    if (cd "$src" && /usr/bin/python3 scripts/$check src/ch/*.c src/ch/*.h) > "$logs/$name.log" 2>&1; then
        echo "   PASS $name"
        passed=$((passed + 1))
    else
        echo "   FAIL $name:"
        sed 's/^/     /' "$logs/$name.log"
        failed=$((failed + 1))
    fi
done

echo "== JSON of the ch driver against the OpenAPI schemas of the Cloud Hypervisor patch"
if ls "$top"/cloud-hypervisor-patch/*.patch > /dev/null 2>&1; then
    if /usr/bin/python3 "$here/check-openapi.py" "$top/cloud-hypervisor-patch" \
        "$src/tests/chxml2jsondata" > "$logs/openapi.log" 2>&1; then rc=0; else rc=$?; fi
    sed 's/^/   /' "$logs/openapi.log"
    n_ok=$(grep -c '^PASS ' "$logs/openapi.log" || true)
    n_bad=$(grep -c '^FAIL ' "$logs/openapi.log" || true)
    [ "$rc" -eq 0 ] || [ "$n_bad" -gt 0 ] || n_bad=1
    passed=$((passed + n_ok))
    failed=$((failed + n_bad))
else
    echo "   FAIL: cloud-hypervisor-patch/*.patch not found"
    failed=$((failed + 1))
fi

echo "== virt-xml-validate: the XML examples in docs/ with the patched schema"
schemas="$work/schemas"
examples="$work/examples"
mkdir -p "$schemas" "$examples"
cp "$src"/src/conf/schemas/*.rng "$schemas/"
# A <memory> device alone (the file given to virsh attach-device)
cat > "$schemas/memorydevice.rng" <<'EOF'
<?xml version="1.0"?>
<grammar xmlns="http://relaxng.org/ns/structure/1.0"
         datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">
  <start>
    <ref name="memorydev"/>
  </start>
  <include href="domaincommon.rng"/>
</grammar>
EOF
/usr/bin/python3 - "$top/docs" "$examples" <<'EOF'
import glob, os, re, sys
docs, out = sys.argv[1], sys.argv[2]
for path in sorted(glob.glob(os.path.join(docs, "*.md"))):
    text = open(path, encoding="utf-8").read()
    for n, block in enumerate(re.findall(r"^```xml\n(.*?)^```", text, re.S | re.M)):
        name = "%s-%d.xml" % (os.path.splitext(os.path.basename(path))[0], n + 1)
        open(os.path.join(out, name), "w", encoding="utf-8").write(block)
EOF
# virt-xml-validate takes a schema name below /usr/share/libvirt/schemas; a relative
# name reaches the patched copy.
rel="../../../..$schemas"
nex=0
for x in "$examples"/*.xml; do
    [ -e "$x" ] || continue
    nex=$((nex + 1))
    root=$(xmllint --xpath 'name(/*)' "$x")
    case "$root" in
        domain) schema=domain ;;
        memory) schema=memorydevice ;;
        *) schema="$root" ;;
    esac
    if virt-xml-validate "$x" "$rel/$schema" > "$logs/validate.log" 2>&1; then
        echo "   PASS docs/$(basename "$x" | sed -E 's/-([0-9]+)\.xml$/.md example \1/') <$root>: $(tail -n1 "$logs/validate.log" | sed "s#$examples/##")"
        passed=$((passed + 1))
    else
        echo "   FAIL docs/$(basename "$x") <$root>:"
        sed 's/^/     /' "$logs/validate.log"
        failed=$((failed + 1))
    fi
    # For contrast: the machine's own libvirt schema does not know the model.
    if [ "$root" = domain ]; then
        if virt-xml-validate "$x" domain > /dev/null 2>&1; then
            echo "     (the unpatched schema of $(virt-xml-validate --version | awk '{print $NF}') accepts it too)"
        else
            echo "     (the unpatched schema of libvirt $(virt-xml-validate --version | awk '{print $NF}') rejects it, as expected)"
        fi
    fi
done
if [ "$nex" -eq 0 ]; then
    echo "   FAIL: no XML example found in docs/"
    failed=$((failed + 1))
fi

echo "== libvirt step done in $(( $(date +%s) - start )) s"
echo "libvirt: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
