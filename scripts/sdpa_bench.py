#!/usr/bin/env python3
"""sdpa_bench.py: PyTorch's scaled_dot_product_attention on the shapes of `03_flash bench`, for the
GPU comparison of chapter 03 (scripts/gpu-check.sh runs it; PyTorch is only needed there).

Prints TSV rows: impl dtype B H T S D causal time_ms tflops, TFLOP/s counting 4*D per visible
(query, key) pair, like the C benchmarks. Time: median of 20 runs after 5 warm-ups, CUDA events.
"""
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("sdpa_bench.py: PyTorch is not installed; skipped", file=sys.stderr)
    sys.exit(0)


def visible_pairs(T, S, causal):
    if not causal:
        return T * S
    return sum(min(S, max(0, t + S - T + 1)) for t in range(T))


def bench(B, H, T, S, D, causal, dtype):
    q = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    k = torch.randn(B, H, S, D, device="cuda", dtype=dtype)
    v = torch.randn(B, H, S, D, device="cuda", dtype=dtype)
    times = []
    for i in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # T == S: top-left = bottom-right
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end))
    ms = sorted(times)[len(times) // 2]
    flops = 4.0 * D * visible_pairs(T, S, causal) * B * H
    print(f"torch_sdpa\t{str(dtype).split('.')[-1]}\t{B}\t{H}\t{T}\t{S}\t{D}\t{int(causal)}\t{ms:.4f}\t{flops / ms / 1e9:.2f}")


if not torch.cuda.is_available():
    print("sdpa_bench.py: no GPU; skipped", file=sys.stderr)
    sys.exit(0)
print("impl\tdtype\tB\tH\tT\tS\tD\tcausal\ttime_ms\ttflops")
for T in (1024, 4096, 16384):
    bench(1, 8, T, T, 64, True, torch.float32)
    bench(1, 8, T, T, 64, True, torch.float16)
bench(1, 8, 4096, 4096, 128, True, torch.float16)
