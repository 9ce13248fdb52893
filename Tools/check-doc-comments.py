#!/usr/bin/env python3
"""Lists public and package declarations of the Swiftlet library that have no `///` comment.

Every public or package symbol of the library's targets (Sources/Swiftlet*) carries a doc
comment (Docs/API.md); `make test` runs
this check and fails when one is missing. A declaration counts as documented when the nearest
non-attribute line above it is a `///` comment (or the end of a `/** */` block).
Usage: Tools/check-doc-comments.py [SOURCE_DIR...]   (default: every Sources/Swiftlet* target)
"""
import glob
import os
import re
import sys

DECLARATION = re.compile(r"(@\w+(\(.*?\))?\s+)*(public|package)\b(?!\s+(import|extension)\b)")


def undocumented(root):
    missing = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.swift"), recursive=True)):
        with open(path) as f:
            lines = f.read().split("\n")
        for index, line in enumerate(lines):
            if not DECLARATION.match(line.strip()):
                continue
            above = index - 1
            while above >= 0 and lines[above].strip().startswith("@"):
                above -= 1
            previous = lines[above].strip() if above >= 0 else ""
            if not (previous.startswith("///") or previous.endswith("*/")):
                missing.append(f"{path}:{index + 1}: {line.strip()[:100]}")
    return missing


if __name__ == "__main__":
    roots = sys.argv[1:] or sorted(glob.glob("Sources/Swiftlet*"))
    missing = [entry for root in roots for entry in undocumented(root)]
    for entry in missing:
        print(entry)
    if missing:
        print(f"doc comments: {len(missing)} public or package declarations have no /// comment", file=sys.stderr)
        sys.exit(1)
    print("doc comments: every public and package declaration is documented")
