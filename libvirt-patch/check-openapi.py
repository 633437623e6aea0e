#!/usr/bin/env python3
"""Check the JSON that libvirt's ch driver builds against the OpenAPI schemas of
the Cloud Hypervisor patch series.

    check-openapi.py CH_PATCH_DIR JSON_DIR

CH_PATCH_DIR holds the Cloud Hypervisor series (*.patch). The schemas are taken
from what the series adds to vmm/src/api/openapi/cloud-hypervisor.yaml:
TaggedMemoryConfig, AddTaggedMemory, ReleaseTaggedMemory, and the
'tagged_memory' property of VmConfig.

JSON_DIR holds the expected files of libvirt's chxml2jsontest:
  NAME.json          vm.create body: each entry of "tagged_memory" must be a
                     TaggedMemoryConfig
  NAME-add.json      vm.add-tagged-memory body: an AddTaggedMemory
  NAME-release.json  vm.release-tagged-memory body: a ReleaseTaggedMemory

Prints one line per check and a closing 'N passed, N failed' line; exits 1 on
any failure.
"""

import copy
import glob
import json
import os
import re
import sys

import jsonschema
import yaml

YAML_PATH = "vmm/src/api/openapi/cloud-hypervisor.yaml"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


def added_yaml_hunks(patch_dir):
    """Lists of added lines, one per hunk of the OpenAPI file."""
    hunks = []
    for path in sorted(glob.glob(os.path.join(patch_dir, "*.patch"))):
        in_yaml = False
        current = None
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.startswith("diff --git "):
                    in_yaml = line.endswith("b/" + YAML_PATH)
                    current = None
                    continue
                if not in_yaml:
                    continue
                if line.startswith("@@"):
                    current = []
                    hunks.append(current)
                elif current is not None and line.startswith("+") and not line.startswith("+++"):
                    current.append(line[1:])
                elif current is not None and line.startswith(" "):
                    # a context line ends a run of added lines
                    if current and current[-1] is not None:
                        current.append(None)
    return hunks


def runs(hunk):
    run = []
    for line in hunk:
        if line is None:
            if run:
                yield run
            run = []
        else:
            run.append(line)
    if run:
        yield run


def extract_schemas(patch_dir):
    """Schemas the series adds under components/schemas, and VmConfig's
    added properties."""
    schemas = {}
    vm_props = {}
    for hunk in added_yaml_hunks(patch_dir):
        for run in runs(hunk):
            text = "\n".join(run)
            first = next((l for l in run if l.strip()), "")
            indent = len(first) - len(first.lstrip())
            if indent == 4 and re.match(r"^    [A-Za-z][A-Za-z0-9]*:\s*$", first):
                doc = yaml.safe_load("\n".join(l[4:] for l in run))
                schemas.update(doc)
            elif indent == 8 and first.strip() == "tagged_memory:":
                doc = yaml.safe_load("\n".join(l[8:] for l in run))
                vm_props.update(doc)
    return schemas, vm_props


def resolve(node, schemas, depth=0):
    """Inline '#/components/schemas/X' references."""
    if depth > 20:
        raise ValueError("reference loop")
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in schemas:
                raise KeyError("schema %s is not in the patch" % name)
            return resolve(copy.deepcopy(schemas[name]), schemas, depth + 1)
        return {k: resolve(v, schemas, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, schemas, depth) for v in node]
    return node


def format_checker():
    checker = jsonschema.FormatChecker()

    @checker.checks("uuid")
    def is_uuid(value):
        return not isinstance(value, str) or bool(UUID_RE.match(value))

    for name, (lo, hi) in INT_RANGES.items():
        def check(value, lo=lo, hi=hi):
            return not isinstance(value, int) or lo <= value <= hi
        checker.checks(name)(check)

    return checker


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, what):
        self.passed += 1
        print("PASS %s" % what)

    def fail(self, what, why):
        self.failed += 1
        print("FAIL %s: %s" % (what, why))

    def validate(self, what, instance, schema, checker, expect_valid=True):
        errors = list(jsonschema.Draft4Validator(schema, format_checker=checker)
                      .iter_errors(instance))
        if bool(errors) != (not expect_valid):
            why = "; ".join(e.message for e in errors) if errors else "accepted"
            self.fail(what, why)
        else:
            self.ok(what)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    patch_dir, json_dir = argv[1], argv[2]
    checks = Checks()
    checker = format_checker()

    schemas, vm_props = extract_schemas(patch_dir)
    for name in ("TaggedMemoryConfig", "AddTaggedMemory", "ReleaseTaggedMemory"):
        if name in schemas:
            checks.ok("the CH patch defines %s" % name)
        else:
            checks.fail("the CH patch defines %s" % name, "not found")
    prop = vm_props.get("tagged_memory", {})
    if prop.get("type") == "array" and \
            prop.get("items", {}).get("$ref", "").endswith("/TaggedMemoryConfig"):
        checks.ok("VmConfig.tagged_memory is an array of TaggedMemoryConfig")
    else:
        checks.fail("VmConfig.tagged_memory is an array of TaggedMemoryConfig",
                    "not found in the CH patch: %r" % prop)
    if checks.failed:
        print("%d passed, %d failed" % (checks.passed, checks.failed))
        return 1

    extent = resolve({"$ref": "#/components/schemas/TaggedMemoryConfig"}, schemas)
    add = resolve({"$ref": "#/components/schemas/AddTaggedMemory"}, schemas)
    release = resolve({"$ref": "#/components/schemas/ReleaseTaggedMemory"}, schemas)
    vm_tagged = resolve(prop, schemas)

    # The schemas must be able to say no, or passing means nothing.
    tag = "0b6c7d8e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
    checks.validate("schema refuses a size given as a string",
                    {"tag": tag, "path": "/dev/dax0.0", "size": "1G"},
                    extent, checker, expect_valid=False)
    checks.validate("schema refuses an unknown key",
                    {"tag": tag, "path": "/dev/dax0.0", "colour": "blue"},
                    extent, checker, expect_valid=False)
    checks.validate("schema refuses a tag that is not a UUID",
                    {"tag": "rack7", "path": "/dev/dax0.0"},
                    extent, checker, expect_valid=False)
    checks.validate("schema refuses a latency over 32 bits",
                    {"path": "/dev/dax0.0", "read_latency": 2**31},
                    extent, checker, expect_valid=False)

    files = sorted(glob.glob(os.path.join(json_dir, "*.json")))
    if not files:
        checks.fail("JSON files in %s" % json_dir, "none found")
    for path in files:
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if name.endswith("-add.json"):
            checks.validate("%s is an AddTaggedMemory" % name, doc, add, checker)
        elif name.endswith("-release.json"):
            checks.validate("%s is a ReleaseTaggedMemory" % name, doc, release, checker)
        elif "tagged_memory" in doc:
            checks.validate("%s: tagged_memory matches VmConfig.tagged_memory" % name,
                            doc["tagged_memory"], vm_tagged, checker)
        else:
            checks.ok("%s has no tagged_memory" % name)

    print("%d passed, %d failed" % (checks.passed, checks.failed))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
