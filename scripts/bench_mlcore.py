"""Kernel benchmark: ms per full-batch epoch, Cython kernel vs numpy vs a pure-Python loop.

Single thread, side by side in one run (absolute times drift on shared machines, ratios much
less). Also measures the machine's dgemm rate (numpy 2048^2 matmul) and each kernel's share
of it, counting 2 * n * (d*h + h*k) * 3 flops per epoch (forward + two backward products).
The last line holds the headline ratios as key=value.

    .venv/bin/python scripts/bench_mlcore.py [--data letter-recognition.data] [--rows 1000]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads BLAS: one thread, like a node's task

import ctypes  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlcore import _kernels  # noqa: E402
from mlcore.model import Params, init_params  # noqa: E402

HIDDEN = (24, 64, 256)
GOALS = {"h24_vs_numpy": 2.0, "h256_vs_numpy": 1.0, "h24_vs_python": 1000.0}


def keep_temporaries_on_the_heap() -> str:
    """Stop glibc from mmap/munmap-ing every (1000, 26) temporary numpy makes per epoch.

    By default each such array is a fresh mapping and page-faults on first touch, which
    made the numpy baseline up to 1.8x slower depending on what ran before. Measuring numpy
    at its best keeps the comparison honest.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
        return "glibc mallopt: temporaries stay on the heap" if ok else "mallopt refused"
    except (OSError, AttributeError):
        return "not glibc: default allocator"


def load_rows(path: Path | None, n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """First n rows of a UCI-style or numeric CSV file, or synthetic ints 0..15."""
    if path is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 16, size=(n, d)).astype(np.float64), rng.integers(0, k, size=n)
    xs, ys = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if fields[0].isalpha():
            ys.append(ord(fields[0].upper()) - ord("A"))
            xs.append([float(v) for v in fields[1:]])
        else:
            ys.append(int(fields[-1]))
            xs.append([float(v) for v in fields[:-1]])
        if len(ys) == n:
            break
    if len(ys) < n:
        raise click.ClickException(f"{path}: only {len(ys)} rows, need {n}")
    return np.array(xs), np.array(ys, dtype=np.int64)


def numpy_epoch(p: Params, x: np.ndarray, onehot: np.ndarray, eta: float) -> None:
    """One full-batch step in lean idiomatic numpy (the fair baseline, updated in place)."""
    z1 = x @ p.w1
    z1 += p.b1
    a1 = np.maximum(z1, 0.0)
    z2 = a1 @ p.w2
    z2 += p.b2
    z2 -= z2.max(axis=1, keepdims=True)
    np.exp(z2, out=z2)
    z2 /= z2.sum(axis=1, keepdims=True)
    z2 -= onehot
    d1 = z2 @ p.w2.T
    d1 *= z1 > 0
    p.w2 -= eta * (a1.T @ z2)
    p.b2 -= eta * z2.sum(axis=0)
    p.w1 -= eta * (x.T @ d1)
    p.b1 -= eta * d1.sum(axis=0)


def python_epoch(w1, b1, w2, b2, x, y, eta: float) -> None:
    """One full-batch step with lists and loops only (what the kernels replace)."""
    d, h, k = len(w1), len(b1), len(b2)
    gw1 = [[0.0] * h for _ in range(d)]
    gw2 = [[0.0] * k for _ in range(h)]
    gb1, gb2 = [0.0] * h, [0.0] * k
    for xr, yi in zip(x, y, strict=True):
        a1 = [max(0.0, b1[j] + sum(xr[i] * w1[i][j] for i in range(d))) for j in range(h)]
        z2 = [b2[c] + sum(a1[j] * w2[j][c] for j in range(h)) for c in range(k)]
        m = max(z2)
        e = [math.exp(v - m) for v in z2]
        s = sum(e)
        d2 = [v / s for v in e]
        d2[yi] -= 1.0
        d1 = [sum(d2[c] * w2[j][c] for c in range(k)) if a1[j] > 0 else 0.0 for j in range(h)]
        for j in range(h):
            for c in range(k):
                gw2[j][c] += a1[j] * d2[c]
        for c in range(k):
            gb2[c] += d2[c]
        for i in range(d):
            for j in range(h):
                gw1[i][j] += xr[i] * d1[j]
        for j in range(h):
            gb1[j] += d1[j]
    for w, g in ((w1, gw1), (w2, gw2)):
        for row, grow in zip(w, g, strict=True):
            for j in range(len(row)):
                row[j] -= eta * grow[j]
    for b, g in ((b1, gb1), (b2, gb2)):
        for j in range(len(b)):
            b[j] -= eta * g[j]


def ms_per_call(fn: Callable[[], None], calls: int, repeats: int = 5) -> float:
    """Median over repeats of the mean wall time per call, in ms."""
    fn()  # warm caches and lazy initialisation
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(samples)


def dgemm_gflops(size: int = 2048) -> float:
    a = np.random.default_rng(1).random((size, size))
    b = np.random.default_rng(2).random((size, size))
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(3))
    return 2 * size**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    parts = [
        f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')} "
        f"threads={i.get('num_threads')}"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return "; ".join(parts) or "no BLAS found"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@click.command()
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="UCI letters or numeric CSV file (default: synthetic ints 0..15).")
@click.option("--rows", type=click.IntRange(min=1), default=1000, show_default=True)
def main(data: Path | None, rows: int) -> None:
    """Print ms per epoch for each kernel, shares of dgemm, ratios and goal verdicts."""
    d, k, eta = 16, 26, 1e-6
    allocator = keep_temporaries_on_the_heap()
    x, y = load_rows(data, rows, d, k)
    d, k = x.shape[1], max(k, int(y.max()) + 1)
    onehot = np.eye(k)[y]
    gflops = dgemm_gflops()
    print(f"cpu: {cpu_model()} ({os.cpu_count()} cores), python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"blas: {blas_description()}")
    print(f"data: {data or 'synthetic ints 0..15'}, n={rows} d={d} k={k}; single thread; "
          f"{allocator}")
    print(f"dgemm 2048^2: {gflops:.1f} GFLOP/s; GFLOP/s below counts the dense model's "
          f"2*n*(d*h + h*k)*3 flops per epoch\n")
    header = f"{'kernel':<10}{'h':>5}{'ms/epoch':>11}{'GFLOP/s':>9}{'of dgemm':>10}{'vs numpy':>10}"
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    cython_ms: dict[int, float] = {}
    for h in HIDDEN:
        flops = 2 * rows * (d * h + h * k) * 3
        p_cy = init_params(d, h, k, seed=1)
        p_np = p_cy.copy()
        calls = max(3, int(2000 / h))
        t_cy = ms_per_call(
            lambda p=p_cy: _kernels.train(x, y, *p.tensors(), 1, eta, 0, 0.0, 1), calls
        )
        t_np = ms_per_call(lambda p=p_np: numpy_epoch(p, x, onehot, eta), calls)
        cython_ms[h] = t_cy
        ratios[f"h{h}_vs_numpy"] = t_np / t_cy
        for name, t, vs in (("cython", t_cy, f"{t_np / t_cy:.2f}x"), ("numpy", t_np, "1.00x")):
            rate = flops / (t * 1e-3) / 1e9
            print(f"{name:<10}{h:>5}{t:>11.3f}{rate:>9.2f}{rate / gflops:>10.1%}{vs:>10}")
    p_py = init_params(d, 24, k, seed=1)
    lists = [t.tolist() for t in p_py.tensors()]
    t_py = ms_per_call(lambda: python_epoch(*lists, x.tolist(), y.tolist(), eta), 1, repeats=1)
    ratios["h24_vs_python"] = t_py / cython_ms[24]
    print(f"{'python':<10}{24:>5}{t_py:>11.1f}{'':>9}{'':>10}"
          f"{'(cython ' + format(ratios['h24_vs_python'], '.0f') + 'x faster)':>30}\n")
    for key, goal in GOALS.items():
        verdict = "met" if ratios[key] >= goal else f"MISSED by {goal / ratios[key]:.2f}x"
        print(f"goal {key} >= {goal:g}: {ratios[key]:.2f} -> {verdict}")
    print(" ".join(f"{key}={value:.2f}" if value < 100 else f"{key}={value:.0f}"
                   for key, value in ratios.items()))


if __name__ == "__main__":
    main()
