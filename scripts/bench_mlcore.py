"""Kernel benchmark: ms per full-batch epoch, Cython kernel vs numpy vs a pure-Python loop.

Single thread, side by side in one run: the contenders' repetitions are interleaved
(round-robin, several rounds) and each reports its best round and the median, so a burst of
load from other processes hits all of them alike (absolute times drift on shared machines,
ratios much less). One call = one epoch (weights in, weights out, all per-call costs
included). Each compiled code path of the kernel (sse2/avx2/avx512) is timed too. Also
measures the machine's dgemm rate (numpy 2048^2 matmul) and each kernel's share of it,
counting 2 * n * (d*h + h*k) * 3 flops per epoch (forward + two backward products; the
kernel skips the inactive ReLU units, so its real flop count is lower). Before timing, one
epoch of the kernel is checked against one epoch of numpy.

With --prox-mu MU (FedProx) every code path is also timed with the proximal term
(`cython[path]+prox`: each step's gradient gains MU * (w - w_start)), side by side with the
same path without it, and the overhead of the term per h is printed; the prox kernel is
first checked against the numpy reference's FedProx training.

Then the forward pass (prediction): microseconds per call of class probabilities for a batch
of rows, the kernel (`_kernels.forward`, the raw call; `model.predict_proba`, with its input
checks) against lean numpy (`x @ w1 + b1`, relu, `@ w2 + b2`, softmax), interleaved the same
way, at the letters model's sizes (d = 16, k = 26, h = 24..256) and at the 10M-parameter
shape of scripts/bench_scale.py (d = 1,000, h = 10,000); the kernel's answers are checked to
be the fixed-order reference's bits first. And the cost of one row through
`Servable.predict`, where Python dominates. The last line holds the headline ratios as
key=value.

    .venv/bin/python scripts/bench_mlcore.py [--data letter-recognition.data] [--rows 1000]
        [--no-wide] [--prox-mu MU]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

from mlcore import _kernels, reference  # noqa: E402
from mlcore.model import (  # noqa: E402
    Params,
    check_prox_mu,
    init_params,
    predict,
    predict_proba,
    train,
)
from mlcore.servable import Servable  # noqa: E402
from runtime.cli import FiniteRange, run_cli  # noqa: E402

HIDDEN = (24, 64, 256)
FORWARD_ROWS = (1, 32, 256, 1000, 10000)
WIDE = (1000, 10_000, 26)  # scripts/bench_scale.py's 10M-parameter model (d, h, k)
WIDE_ROWS = (1, 32, 256, 1000)
# issue 17's goals (on AMD Zen 4 and Intel Xeon alike) beside the older plain-loop one;
# h256_of_dgemm is the default path's share of the machine's dgemm rate
GOALS = {"h24_vs_numpy": 2.0, "h256_vs_numpy": 1.5, "h256_of_dgemm": 0.70,
         "h24_vs_python": 1000.0}


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
    """One full-batch step with lists and loops only (what the kernels replace).

    Written as a Python programmer who cares about speed would: explicit loops with row
    references hoisted, inactive units skipped. It is about 2x faster than the same maths
    with generator expressions (python_epoch_generators), so the ratio against it is the
    harder, honest one.
    """
    d, h, k = len(w1), len(b1), len(b2)
    gw1 = [[0.0] * h for _ in range(d)]
    gw2 = [[0.0] * k for _ in range(h)]
    gb1, gb2 = [0.0] * h, [0.0] * k
    for xr, yi in zip(x, y, strict=True):
        z1 = list(b1)
        for i in range(d):
            xi, wi = xr[i], w1[i]
            for j in range(h):
                z1[j] += xi * wi[j]
        a1 = [v if v > 0.0 else 0.0 for v in z1]
        z2 = list(b2)
        for j in range(h):
            aj = a1[j]
            if aj > 0.0:
                wj = w2[j]
                for c in range(k):
                    z2[c] += aj * wj[c]
        m = max(z2)
        e = [math.exp(v - m) for v in z2]
        s = sum(e)
        d2 = [v / s for v in e]
        d2[yi] -= 1.0
        d1 = [0.0] * h
        for j in range(h):
            aj = a1[j]
            if aj > 0.0:
                wj, g, acc = w2[j], gw2[j], 0.0
                for c in range(k):
                    acc += d2[c] * wj[c]
                    g[c] += aj * d2[c]
                d1[j] = acc
        for c in range(k):
            gb2[c] += d2[c]
        for i in range(d):
            xi, g = xr[i], gw1[i]
            for j in range(h):
                g[j] += xi * d1[j]
        for j in range(h):
            gb1[j] += d1[j]
    _python_step(w1, b1, w2, b2, gw1, gb1, gw2, gb2, eta)


def python_epoch_generators(w1, b1, w2, b2, x, y, eta: float) -> None:
    """The same step with comprehensions and generator expressions (shown for comparison)."""
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
    _python_step(w1, b1, w2, b2, gw1, gb1, gw2, gb2, eta)


def _python_step(w1, b1, w2, b2, gw1, gb1, gw2, gb2, eta: float) -> None:
    for w, g in ((w1, gw1), (w2, gw2)):
        for row, grow in zip(w, g, strict=True):
            for j in range(len(row)):
                row[j] -= eta * grow[j]
    for b, g in ((b1, gb1), (b2, gb2)):
        for j in range(len(b)):
            b[j] -= eta * g[j]


def interleaved_ms(fns: dict[str, Callable[[], None]], calls: int,
                   rounds: int) -> dict[str, tuple[float, float]]:
    """(best, median) ms per call of each fn; rounds run the fns round-robin, `calls` each,
    the starting fn rotating so none always runs first after the others."""
    for fn in fns.values():
        fn()  # warm caches and lazy initialisation
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {name: (min(v), statistics.median(v)) for name, v in samples.items()}


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


def _kernel_epoch(p: Params, x: np.ndarray, y: np.ndarray, eta: float, path: str,
                  prox_mu: float = 0.0, start: Params | None = None) -> None:
    """One full-batch epoch of the Cython kernel on the given code path, weights in place;
    with prox_mu, FedProx's term pulling towards `start`."""
    _kernels.set_isa(path)
    if prox_mu:
        assert start is not None
        _kernels.train(x, y, *p.tensors(), 1, eta, 0, 0.0, 1, 0.0, None, prox_mu,
                       *start.tensors())
    else:
        _kernels.train(x, y, *p.tensors(), 1, eta, 0, 0.0, 1)


def check_prox(x: np.ndarray, y: np.ndarray, d: int, h: int, k: int, prox_mu: float) -> None:
    """The timed prox kernel must train what the numpy reference's FedProx trains."""
    start = init_params(d, h, k, seed=2, scale=0.1)
    rows, eta = x[:200], min(1e-4, 0.5 / prox_mu)
    got = train(start, rows, y[:200], epochs=3, eta=eta, prox_mu=prox_mu).params
    want = reference.train(start, rows, y[:200], epochs=3, eta=eta, prox_mu=prox_mu)
    for a, b in zip(got.tensors(), want.tensors(), strict=True):
        if not np.allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max()):
            raise click.ClickException(f"h={h}: the prox kernel and the reference disagree")


def check_one_epoch(x: np.ndarray, y: np.ndarray, onehot: np.ndarray, d: int, h: int,
                    k: int) -> None:
    """The timed kernel and the timed numpy step must compute the same update."""
    eta = 1e-3
    p_cy, p_np = init_params(d, h, k, seed=2, scale=0.1), init_params(d, h, k, seed=2, scale=0.1)
    _kernels.train(x, y, *p_cy.tensors(), 1, eta, 0, 0.0, 1)
    numpy_epoch(p_np, x, onehot, eta)
    for a, b in zip(p_cy.tensors(), p_np.tensors(), strict=True):
        if not np.allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max()):
            raise click.ClickException(f"h={h}: the kernel and numpy disagree after one epoch")


def prox_minibatch(x: np.ndarray, y: np.ndarray, d: int, k: int, eta: float,
                   prox_mu: float) -> dict[str, float]:
    """Print the proximal term's cost with mini-batches on the default path, where its
    per-step work (about 3 operations per parameter) weighs most; return the overheads."""
    out = {}
    print(f"mini-batches, momentum 0.9, {_kernels.isa()}: ms/epoch without, with the term "
          "(best rounds; medians in brackets)")
    for h in (24, 256):
        start = init_params(d, h, k, seed=1)
        for batch in (1, 32):
            fns: dict[str, Callable[[], None]] = {}
            for mu in (0.0, prox_mu):
                p = init_params(d, h, k, seed=1)
                extra = (0.0, None, mu, *start.tensors()) if mu else ()
                fns[str(mu)] = lambda p=p, extra=extra, batch=batch: _kernels.train(
                    x, y, *p.tensors(), 1, eta, batch, 0.9, 1, *extra)
            t = interleaved_ms(fns, calls=2, rounds=9)
            (b0, m0), (b1, m1) = t["0.0"], t[str(prox_mu)]
            out[f"h{h}_b{batch}_prox_overhead_pct"] = 100 * (b1 / b0 - 1)
            print(f"h = {h:>3}, batch {batch:>2}: {b0:8.3f} ({m0:.3f}) -> {b1:8.3f} ({m1:.3f})"
                  f"  {100 * (b1 / b0 - 1):+.1f}%")
    return out


def numpy_forward(p: Params, x: np.ndarray) -> np.ndarray:
    """Class probabilities in lean idiomatic numpy (BLAS products, in-place ops)."""
    z1 = x @ p.w1
    z1 += p.b1
    np.maximum(z1, 0.0, out=z1)
    z2 = z1 @ p.w2
    z2 += p.b2
    z2 -= z2.max(axis=1, keepdims=True)
    np.exp(z2, out=z2)
    z2 /= z2.sum(axis=1, keepdims=True)
    return z2


def forward_rows(d: int, h: int, k: int, row_counts: tuple[int, ...],
                 scale: float) -> tuple[dict[str, float], list[str]]:
    """Time numpy, the raw kernel call and model.predict_proba at each row count: the
    ratios (numpy / kernel, best rounds) by row count, and the table's lines."""
    p = init_params(d, h, k, seed=1, scale=scale)
    ratios, lines = {}, []
    for rows in row_counts:
        x = np.random.default_rng(rows).integers(0, 16, size=(rows, d)).astype(np.float64)
        out = np.empty((rows, k))
        check = x[:64]
        if predict_proba(p, check).tobytes() != reference.predict_proba(p, check).tobytes():
            raise click.ClickException(f"h={h}: the forward kernel is not the reference's bits")
        work = rows * (d * h + h * k)
        calls = max(1, min(2000, int(2e6 / work)))
        timings = interleaved_ms({
            "numpy": lambda x=x: numpy_forward(p, x),
            f"cython[{_kernels.isa()}]": lambda x=x, out=out: _kernels.forward(
                x, *p.tensors(), out),
            "model.predict_proba": lambda x=x: predict_proba(p, x),
        }, calls, rounds=9 if work < 1e8 else 5)
        t_np = timings["numpy"][0]
        ratios[rows] = t_np / timings[f"cython[{_kernels.isa()}]"][0]
        for name, (best, median) in timings.items():
            lines.append(f"{name:<21}{h:>6}{rows:>7}{best * 1e3:>11.1f}{median * 1e3:>11.1f}"
                         f"{rows / best * 1e3:>12,.0f}{t_np / best:>9.2f}x")
    return ratios, lines


def one_row_us(h: int) -> str:
    """Microseconds for one row through each layer of the serving path (d = 16, k = 26)."""
    p = init_params(16, h, 26, seed=1, scale=0.3)
    x = np.random.default_rng(1).integers(0, 16, size=(1, 16)).astype(np.float64)
    out = np.empty((1, 26))
    servable = Servable((p,))
    timings = interleaved_ms({
        "kernel": lambda: _kernels.forward(x, *p.tensors(), out),
        "model.predict": lambda: predict(p, x),
        "Servable.predict": lambda: servable.predict(x),
        "numpy": lambda: numpy_forward(p, x),
    }, calls=2000, rounds=9)
    return ", ".join(f"{name} {best * 1e3:.1f}" for name, (best, _) in timings.items())


def forward_section(wide: bool) -> dict[str, float]:
    """Print the forward-pass table; return its headline ratios."""
    print("\nforward pass (class probabilities), us per call, single thread, best and median "
          "of interleaved rounds:\n")
    header = (f"{'forward':<21}{'h':>6}{'rows':>7}{'us/call':>11}{'median':>11}"
              f"{'rows/s':>12}{'vs numpy':>10}")
    print(header)
    print("-" * len(header))
    worst, ratios = math.inf, {}
    for h in HIDDEN:
        by_rows, lines = forward_rows(16, h, 26, FORWARD_ROWS, scale=0.3)
        print("\n".join(lines))
        worst = min(worst, *by_rows.values())
        ratios[f"fwd_h{h}_r1_vs_numpy"] = by_rows[1]
    ratios["fwd_letters_min_vs_numpy"] = worst
    if wide:
        d, h, k = WIDE
        by_rows, lines = forward_rows(d, h, k, WIDE_ROWS, scale=0.01)
        print(f"(d = {d:,}, h = {h:,}: the 10M-parameter model)")
        print("\n".join(lines))
        ratios["fwd_10m_r1_vs_numpy"] = by_rows[1]
        ratios["fwd_10m_r1000_vs_numpy"] = by_rows[1000]
    print(f"\none row, h = 64, us per call: {one_row_us(64)}")
    return ratios


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="UCI letters or numeric CSV file (default: synthetic ints 0..15).")
@click.option("--rows", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--wide/--no-wide", default=True, show_default=True,
              help="Also time the forward pass of the 10M-parameter model (80 MB of w1).")
@click.option("--prox-mu", type=FiniteRange(min=0), default=0.0, show_default=True,
              help="Also time every code path with FedProx's proximal term of this mu "
                   "(0: not at all).")
def cli(data: Path | None, rows: int, wide: bool, prox_mu: float) -> None:
    """Print ms per epoch for each kernel, shares of dgemm, ratios and goal verdicts, then
    the forward pass against numpy."""
    d, k, eta = 16, 26, 1e-6
    try:
        check_prox_mu(prox_mu, eta)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prox-mu") from None
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
    paths = _kernels.isa_names()
    print(f"kernel code paths on this CPU: {', '.join(paths)} (default {_kernels.isa()}; "
          f"all give the same bits)\n")
    wn = 21 if prox_mu else 16  # the name column: room for "cython[avx512]+prox"
    header = (f"{'kernel':<{wn}}{'h':>5}{'ms/epoch':>10}{'median':>9}{'GFLOP/s':>9}"
              f"{'of dgemm':>10}{'vs numpy':>10}")
    print(header)
    print("-" * len(header))
    ratios: dict[str, float] = {}
    cython_ms: dict[int, float] = {}
    prox_lines: list[str] = []
    default = _kernels.isa()
    for h in HIDDEN:
        flops = 2 * rows * (d * h + h * k) * 3
        check_one_epoch(x, y, onehot, d, h, k)
        if prox_mu:
            check_prox(x, y, d, h, k, prox_mu)
        p_np = init_params(d, h, k, seed=1)
        fns: dict[str, Callable[[], None]] = {
            "numpy": lambda p=p_np: numpy_epoch(p, x, onehot, eta)}
        start = init_params(d, h, k, seed=1)
        for path in [default] + [q for q in paths if q != default]:
            p_cy = init_params(d, h, k, seed=1)
            fns[f"cython[{path}]"] = lambda p=p_cy, q=path: _kernel_epoch(p, x, y, eta, q)
            if prox_mu:
                p_px = init_params(d, h, k, seed=1)
                fns[f"cython[{path}]+prox"] = lambda p=p_px, q=path, s=start: _kernel_epoch(
                    p, x, y, eta, q, prox_mu, s)
        calls = max(2, int(1000 / h))
        timings = interleaved_ms(fns, calls, rounds=15 if h < 256 else 9)
        _kernels.set_isa(default)
        t_np = timings["numpy"][0]
        cython_ms[h] = timings[f"cython[{default}]"][0]
        ratios[f"h{h}_vs_numpy"] = t_np / cython_ms[h]
        for name, (best, median) in timings.items():
            rate = flops / (best * 1e-3) / 1e9
            if name == f"cython[{default}]":
                ratios[f"h{h}_of_dgemm"] = rate / gflops
            print(f"{name:<{wn}}{h:>5}{best:>10.3f}{median:>9.3f}{rate:>9.2f}"
                  f"{rate / gflops:>10.1%}{t_np / best:>9.2f}x")
        if prox_mu:
            parts = []
            for path in paths:
                (best, median), (best_px, median_px) = (timings[f"cython[{path}]"],
                                                        timings[f"cython[{path}]+prox"])
                parts.append(f"{path} {100 * (best_px / best - 1):+.1f}% "
                             f"(median {100 * (median_px / median - 1):+.1f}%)")
                if path == default:
                    ratios[f"h{h}_prox_overhead_pct"] = 100 * (best_px / best - 1)
            prox_lines.append(f"h = {h:>3}: " + ", ".join(parts))
    p_py = init_params(d, 24, k, seed=1)
    py = interleaved_ms(
        {name: (lambda fn=fn: fn(*[t.tolist() for t in p_py.tensors()], x.tolist(),
                                 y.tolist(), eta))
         for name, fn in (("python loops", python_epoch),
                          ("python gen.", python_epoch_generators))},
        calls=1, rounds=3)
    t_py = min(best for best, _ in py.values())  # the faster plain-Python version
    ratios["h24_vs_python"] = t_py / cython_ms[24]
    for name, (best, median) in py.items():
        faster = f"(cython[{default}] {best / cython_ms[24]:.0f}x faster)"
        print(f"{name:<{wn}}{24:>5}{best:>10.1f}{median:>9.1f}{'':>19}{faster:>33}")
    if prox_mu:
        print(f"\nFedProx term (prox_mu = {prox_mu:g}), time per epoch over the same path "
              "without it (best rounds):")
        print("\n".join(prox_lines))
        ratios.update(prox_minibatch(x, y, d, k, eta, prox_mu))
    print()
    for key, goal in GOALS.items():
        verdict = "met" if ratios[key] >= goal else f"MISSED by {goal / ratios[key]:.2f}x"
        print(f"goal {key} >= {goal:g}: {ratios[key]:.2f} -> {verdict}")
    ratios.update(forward_section(wide))
    print()
    print(" ".join(f"{key}={value:.2f}" if value < 100 else f"{key}={value:.0f}"
                   for key, value in ratios.items()))


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "bench_mlcore.py", argv)


if __name__ == "__main__":
    main()
