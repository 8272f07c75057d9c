#!/usr/bin/env python3
"""Fails when a module of src/ imports from a layer it must not (docs/architecture.md).

Every `crate::NAME` path in a file under src/NAME(.rs|/) counts, grouped imports
(`use crate::{a::X, b::Y}`) included; comments are ignored. The table below is the picture
in docs/architecture.md: change both together.
"""
import pathlib
import re
import sys

# What each top-level module may import. `store` and `remote` are leaves: they import only the
# shared vocabulary.
ALLOWED = {
    "types": set(),
    "store": {"types"},
    # The block cache fetches file data itself (one fetcher for every download) and keeps
    # its blocks and pins in the database.
    "cache": {"types", "store", "remote"},
    "remote": {"types"},
    # vfs and sync never import each other: they share the database and nothing else.
    "vfs": {"types", "store", "cache", "remote"},
    "sync": {"types", "store", "cache", "remote"},
    "control": {"types", "store", "cache", "remote", "vfs", "sync"},
    # The FUSE adapter only translates: it calls the core and the control protocol.
    "fuse": {"types", "control", "vfs"},
    # The daemon's HTTP endpoints read the same figures as the CLI, through `control`.
    "web": {"types", "control"},
    "daemon": {"types", "store", "cache", "remote", "vfs", "sync", "control", "fuse", "web"},
    # cli reads the databases of unused state dirs (`stratus clean --state-dirs`), never one
    # a mount holds: that goes through `control`.
    "cli": {"types", "store", "remote", "sync", "control", "daemon"},
    "lib": None,  # lib.rs declares the modules
    "main": None,
}

COMMENT = re.compile(r"//[^\n]*")
PATH = re.compile(r"\bcrate::(\{|[a-z_][a-z0-9_]*)")


def top_names_in_group(text, start):
    """Names at the head of each path inside the `{...}` that opens at `start`."""
    depth, i, names, expect = 0, start, [], True
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            expect = depth == 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return names
        elif c == "," and depth == 1:
            expect = True
        elif expect and depth == 1 and (c.isalpha() or c == "_"):
            m = re.match(r"[a-z_][a-z0-9_]*", text[i:])
            if m:
                names.append(m.group(0))
                i += len(m.group(0))
                expect = False
                continue
        elif not c.isspace():
            expect = False if depth == 1 and c not in "{" else expect
        i += 1
    return names


def imports(text):
    text = COMMENT.sub("", text)
    for m in PATH.finditer(text):
        if m.group(1) == "{":
            yield from top_names_in_group(text, m.end() - 1)
        else:
            yield m.group(1)


def main():
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    bad = []
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        layer = rel.parts[0].removesuffix(".rs")
        if layer not in ALLOWED:
            bad.append(f"{f}: module `{layer}` has no row in scripts/check_layers.py")
            continue
        allowed = ALLOWED[layer]
        if allowed is None:
            continue
        for name in sorted(set(imports(f.read_text()))):
            if name != layer and name not in allowed:
                bad.append(f"{f}: `{layer}` must not import `{name}`")
    for b in bad:
        print(b, file=sys.stderr)
    if bad:
        print(f"layering: {len(bad)} violation(s)", file=sys.stderr)
        return 1
    print("layering: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
