#!/usr/bin/env python3
"""Checks that every code block in README.md preceded by `<!-- excerpt: PATH -->` is a verbatim
run of lines of PATH, so the README's C, C++ and Go examples cannot drift from the files the test
suite compiles and runs. Exits non-zero naming the first block that does not match."""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
readme = (root / "README.md").read_text()
blocks = re.findall(r"<!-- excerpt: (\S+) -->\n```[a-z+]*\n(.*?)```", readme, re.S)
if not blocks:
    sys.exit("README.md has no excerpt blocks")
for path, body in blocks:
    source = (root / path).read_text()
    if body not in source:
        sys.exit(f"README.md: the excerpt of {path} is not a verbatim part of the file:\n{body}")
print(f"{len(blocks)} README excerpts match their files")
