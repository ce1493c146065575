#!/usr/bin/env python3
"""PyTorch's (MKL / oneDNN) and numpy's BLAS GFLOP/s at the shapes of
`cargo run --release -p ferrotune-model --example gemm_shapes`, for comparison:

    python3 scripts/torch_gemm_shapes.py [THREADS,...] [MxKxN ...]

Same products (forward x W^T, backward g W and g^T x), same timing rule (the fastest of
the repeats made in at least 0.3 s, after two warm-up calls). Needs torch; numpy is optional.
Never a test dependency.
"""

import sys
import time

import torch

SHAPES = ["512x256x688", "512x256x768", "512x688x256", "512x256x8000",
          "1024x576x1536", "1024x1536x576"]


def best_seconds(f):
    f()
    f()
    times = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < 0.3:
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def numpy_blas_threads():
    """The thread-count setter of the OpenBLAS bundled with numpy (scipy-openblas), or
    None when it cannot be found."""
    import ctypes
    import glob
    import os

    import numpy as np
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


def main():
    args = sys.argv[1:]
    threads = [1, 2]
    if args and "x" not in args[0]:
        threads = [int(t) for t in args[0].split(",")]
    shapes = [a for a in args if "x" in a] or SHAPES
    try:
        import numpy as np
        set_blas_threads = numpy_blas_threads()
    except ImportError:
        np = None
    print(f"torch {torch.__version__}" + (f", numpy {np.__version__}" if np else ""))
    print("| M x K x N | product | threads | torch GFLOP/s | numpy GFLOP/s |")
    print("|---|---|---|---|---|")
    for spec in shapes:
        m, k, n = (int(d) for d in spec.split("x"))
        x, w, g = torch.randn(m, k), torch.randn(n, k) * 0.05, torch.randn(m, n)
        flops = 2.0 * m * n * k
        for t in threads:
            torch.set_num_threads(t)
            for name, a, b in [("x W^T (forward)", x, w.t()), ("g W (grad x)", g, w),
                               ("g^T x (grad W)", g.t(), x)]:
                tt = best_seconds(lambda: a @ b)
                cell = ""
                if np is not None:
                    an, bn = a.numpy(), b.numpy()
                    if set_blas_threads is not None:
                        set_blas_threads(t)
                        cell = f"{flops / best_seconds(lambda: an @ bn) / 1e9:.0f}"
                print(f"| {spec} | {name} | {t} | {flops / tt / 1e9:.0f} | {cell} |")


if __name__ == "__main__":
    main()
