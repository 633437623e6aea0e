#!/usr/bin/env python3
"""Fails when two source files of one crate import each other, directly or through others.

A file's imports are its `use crate::…`, `use super::…` and `crate::…`/`super::…` paths outside
comments and outside its `#[cfg(test)]` tail; each resolves to the longest module path that is a
file of the crate. Re-exports from a crate root (`pub use x::Y` in lib.rs) are not edges, so
`use crate::Y` in a child is not a cycle through the root.
"""
import os
import re
import sys

PATH = re.compile(r"\b((?:crate|super|self)(?:::\w+)+)")


def module_of(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def code_of(path):
    text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
    return "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))


def graph(src):
    files = {}
    for d, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(d, n)
                files[module_of(src, p)] = p
    edges = {m: set() for m in files}
    for m, p in files.items():
        here = list(m)
        for found in PATH.findall(code_of(p)):
            parts = found.split("::")
            if parts[0] == "crate":
                base, parts = [], parts[1:]
            elif parts[0] == "self":
                base, parts = here, parts[1:]
            else:
                base = here
                while parts and parts[0] == "super":
                    base, parts = base[:-1], parts[1:]
            for i in range(len(parts), -1, -1):
                target = tuple(base + parts[:i])
                if target in files:
                    if target != m and target != ():
                        edges[m].add(target)
                    break
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main(root):
    found = 0
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in ("target", ".git", "corpus", "artifacts")]
        if "Cargo.toml" in names and os.path.isdir(os.path.join(d, "src")):
            for comp in cycles(graph(os.path.join(d, "src"))):
                found += 1
                names_ = sorted("::".join(m) for m in comp)
                print(f"import cycle in {os.path.relpath(d, root)}/src: {', '.join(names_)}")
    print(f"import cycles: {found}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
