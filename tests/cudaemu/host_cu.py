#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""host_cu.py IN.cu OUT.cpp: a CUDA source as host C++ for cudaemu.h.

Two rewrites, nothing else: a launch `kernel<T...><<<grid, block, smem, stream>>>(args)`
becomes `emu_bind(kernel<T...>, grid, block, smem, stream)(args)`, and a dynamic shared
array `extern __shared__ [__align__(N)] T name[];` becomes `T *name = (T *)emu_dyn_smem();`
(the emulator's shared memory is 256-byte aligned). A #line directive keeps
compiler messages pointing at the .cu file.
"""
import re
import sys


def main():
    src_path, out_path = sys.argv[1], sys.argv[2]
    with open(src_path, encoding="utf-8") as f:
        src = f.read()
    launch = re.compile(r"\b([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<")
    src, n_launch = launch.subn(r"emu_bind(\1, ", src)
    src, n_close = re.subn(r">>>\s*\(", ")(", src)
    if n_launch != n_close:
        sys.exit(f"{src_path}: {n_launch} launches opened, {n_close} closed")
    src = re.sub(r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?"
                 r"([A-Za-z_][\w ]*?)\s+(\w+)\s*\[\s*\]\s*;",
                 r"\1 *\2 = (\1 *)emu_dyn_smem();", src)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write('#include "cudaemu.h"\n')
        f.write(f'#line 1 "{src_path}"\n')
        f.write(src)


if __name__ == "__main__":
    main()
