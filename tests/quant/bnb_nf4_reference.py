#!/usr/bin/env python3
"""Prints the bitsandbytes NF4 reference values that tests/quant/test_nf4.cpp pins.

Optional cross-check, not needed to build or run the tests: it quantises the same seeded tensor
as the C++ test with bitsandbytes' own quantize_4bit (CPU, default backend) and prints FNV-1a
hashes of the codes and of the absmax bytes, the double-quantisation offset and scales, and a hash
of bitsandbytes' signed dynamic 8-bit map.  Needs `pip install torch bitsandbytes`.
"""
import struct

import bitsandbytes.functional as F
import numpy as np
import torch

ROWS, COLS = 67, 999
MASK = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


def seeded_tensor():
    # Irwin-Hall(4) in exact double arithmetic, so C++ and Python produce the same f32 values.
    state = 2024
    out = np.empty(ROWS * COLS, dtype=np.float32)
    for i in range(ROWS * COLS):
        s = 0.0
        for _ in range(4):
            state, z = splitmix64(state)
            s += (z >> 40) * 2.0**-24
        v = (s - 2.0) * 0.05
        if i % 97 == 0:
            v *= 8.0
        out[i] = np.float32(v)
    return out.reshape(ROWS, COLS)


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def reference_absmax_codes(state, x):
    """The absmax codes as bitsandbytes' torch reference backend (backends/default/ops.py,
    quantize_blockwise) computes them: bucketize on the f32 midpoints of the dynamic map. The
    native CPU library reaches the same codes by a table search that can differ near midpoints;
    CUDA and the reference backend pick the nearest value."""
    _, s0 = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=False)
    a = s0.absmax - s0.absmax.mean()
    code = F.create_dynamic_map(signed=True)
    bounds = (code[:-1] + code[1:]) / 2
    out = []
    for c in range(0, a.numel(), 256):
        blk = a[c:c + 256]
        m = blk.abs().max().clamp(min=1e-38)
        scaled = blk * (1.0 / m) if blk.numel() == 256 else blk / m
        out.append(torch.bucketize(torch.clamp(scaled, -1, 1), bounds, out_int32=True).to(torch.uint8))
    return torch.cat(out).numpy()


def main():
    x = torch.from_numpy(seeded_tensor())
    n = x.numel()
    print(f"x[0..3] = {[float(v) for v in x.reshape(-1)[:4]]}")
    for dq in (False, True):
        packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=dq)
        p = packed.reshape(-1).numpy()
        codes = np.empty(2 * p.size, dtype=np.uint8)
        codes[0::2] = p >> 4
        codes[1::2] = p & 0xF
        codes = codes[:n]
        print(f"double_quant={dq}: codes fnv1a 0x{fnv1a(codes.tobytes()):016x}")
        if dq:
            cpu = state.absmax.numpy()
            print(f"  absmax (u8, native CPU library) fnv1a 0x{fnv1a(cpu.tobytes()):016x}")
            ref = reference_absmax_codes(state, x)
            print(f"  absmax (u8, torch reference backend) fnv1a 0x{fnv1a(ref.tobytes()):016x}")
            for i in np.nonzero(ref != cpu)[0]:
                print(f"  absmax byte {i}: reference {ref[i]}, native CPU library {cpu[i]}")
            print(f"  offset {float(state.offset).hex()} bits 0x{struct.unpack('<I', np.float32(state.offset).tobytes())[0]:08x}")
            print("  absmax2 bits " + ", ".join(
                f"0x{struct.unpack('<I', v.tobytes())[0]:08x}" for v in state.state2.absmax.numpy()))
        else:
            print(f"  absmax (f32) fnv1a 0x{fnv1a(state.absmax.numpy().tobytes()):016x}")
    dmap = F.create_dynamic_map(signed=True).numpy().astype(np.float32)
    print(f"dynamic map fnv1a 0x{fnv1a(dmap.tobytes()):016x}")
    nf4 = F.get_4bit_type("nf4", device="cpu").numpy().astype(np.float32)
    print(f"nf4 table fnv1a 0x{fnv1a(nf4.tobytes()):016x}")


if __name__ == "__main__":
    main()
