#!/usr/bin/env python3
"""Writes a C file defining `const char NAME[]` with the bytes of a file."""
import sys
src, out, name = sys.argv[1:4]
data = open(src, "rb").read()
with open(out, "w") as f:
    f.write(f"/* generated from {src.split('/')[-1]} */\n#include <stddef.h>\n")
    f.write(f"const char {name}[] = {{")
    f.write(",".join(str(b) for b in data) + ",0};\n")
    f.write(f"const size_t {name}_len = {len(data)};\n")
