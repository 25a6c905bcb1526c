"""The Cython kernels agree with the numpy reference and are bitwise reproducible."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from mlcore import _kernels, reference
from mlcore.model import Params, gradient, init_params, loss, predict, predict_proba, train

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-10


def _problem(n: int = 300, d: int = 16, h: int = 24, k: int = 26, seed: int = 1):
    rng = np.random.default_rng(seed + 100)
    x = rng.integers(0, 16, size=(n, d)).astype(np.float64)
    y = rng.integers(0, k, size=n)
    return init_params(d, h, k, seed=seed), x, y


def _assert_close(got: Params, want: Params) -> None:
    for g, w in zip(got.tensors(), want.tensors(), strict=True):
        scale = np.max(np.abs(w))
        assert np.max(np.abs(g - w)) <= RTOL * scale, np.max(np.abs(g - w)) / scale


def _digest(params: Params) -> str:
    return hashlib.sha256(b"".join(t.tobytes() for t in params.tensors())).hexdigest()


@pytest.mark.parametrize(("h", "scale"), [(24, 0.01), (64, 0.3), (5, 1.0)])
def test_forward_matches_reference(h, scale):
    params, x, _ = _problem(h=h)
    params = init_params(params.d, h, params.k, seed=2, scale=scale)
    _, _, want = reference.forward(params, x)
    got = predict_proba(params, x)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    np.testing.assert_array_equal(predict(params, x), np.argmax(want, axis=1))


@pytest.mark.parametrize(("h", "scale"), [(24, 0.01), (64, 0.3), (5, 1.0)])
def test_gradient_and_loss_match_reference(h, scale):
    params, x, y = _problem(h=h)
    params = init_params(params.d, h, params.k, seed=2, scale=scale)
    _assert_close(gradient(params, x, y), reference.gradients(params, x, y))
    assert loss(params, x, y) == pytest.approx(reference.mean_loss(params, x, y), rel=RTOL)


def test_full_batch_training_matches_reference():
    params, x, y = _problem()
    got = train(params, x, y, epochs=8, eta=1e-3)
    want = reference.train(params, x, y, epochs=8, eta=1e-3)
    _assert_close(got.params, want)
    assert got.loss == pytest.approx(reference.mean_loss(want, x, y), rel=RTOL)


@pytest.mark.parametrize(("batch_size", "momentum"), [(32, 0.9), (7, 0.0), (300, 0.5), (500, 0.0)])
def test_minibatch_training_matches_reference(batch_size, momentum):
    params, x, y = _problem()
    kwargs = dict(epochs=3, eta=2e-3, batch_size=batch_size, momentum=momentum, seed=11)
    _assert_close(train(params, x, y, **kwargs).params, reference.train(params, x, y, **kwargs))


def test_minibatch_shuffle_depends_on_seed():
    params, x, y = _problem()
    a = train(params, x, y, epochs=2, eta=1e-3, batch_size=16, seed=1).params
    b = train(params, x, y, epochs=2, eta=1e-3, batch_size=16, seed=2).params
    assert _digest(a) != _digest(b)


def test_training_does_not_modify_its_input():
    params, x, y = _problem()
    before = _digest(params)
    train(params, x, y, epochs=2, eta=1e-3)
    assert _digest(params) == before


@pytest.fixture(params=_kernels.isa_names())
def isa(request):
    """Run the test on each compiled code path this CPU supports (sse2, avx2, avx512)."""
    previous = _kernels.set_isa(request.param)
    yield request.param
    _kernels.set_isa(previous)


def test_own_exp_is_within_one_ulp_of_numpy(isa):
    t = -np.concatenate([np.linspace(0.0, 708.0, 200_001), np.geomspace(1e-300, 700.0, 50_001)])
    got = np.empty_like(t)
    _kernels.exp_nonpos_array(t, got)
    want = np.exp(t)
    assert np.max(np.abs(got - want) / np.spacing(want)) <= 1.0
    scalar = np.empty_like(t)
    _kernels.exp_nonpos_scalar(t, scalar)
    np.testing.assert_array_equal(got, scalar)


def test_reference_exp_is_the_kernels_exp_bit_for_bit(isa):
    t = -np.concatenate([np.linspace(0.0, 720.0, 100_001), np.geomspace(1e-300, 700.0, 10_001)])
    got = np.empty_like(t)
    _kernels.exp_nonpos_array(t, got)
    np.testing.assert_array_equal(got.view(np.uint64), reference.exp_nonpos(t).view(np.uint64))


# (d, h, k, scale): the letters model, widths with padding (h, k not multiples of 4), several
# 64-unit mask words and class tiles, one-unit layers, odd input widths, and a w1 beyond L1
# (blocks of 64 rows; fewer than 4 rows stream w1 row by row, odd d leaving a remainder).
FORWARD_SHAPES = [(16, 24, 26, 0.3), (16, 256, 26, 0.1), (7, 5, 3, 1.0), (13, 70, 41, 0.5),
                  (3, 130, 2, 1.0), (1, 1, 1, 1.0), (33, 9, 5, 0.7), (16, 64, 26, 2.0),
                  (201, 132, 26, 0.05), (37, 300, 10, 0.2)]
BATCH_SIZES = (1, 2, 3, 7, 8, 9, 64, 67, 1000)


def _rows(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(d + 7).normal(0.0, 4.0, size=(n, d))


@pytest.mark.parametrize(("d", "h", "k", "scale"), FORWARD_SHAPES)
def test_forward_gives_the_reference_bits_in_every_batch(isa, d, h, k, scale):
    """Probabilities and labels equal the fixed-order numpy reference bit for bit, and a
    row's answer is the same whatever batch it comes in (register tiles of 4 rows, blocks of
    8-64 rows and their remainders only regroup rows, never a row's sums)."""
    params = init_params(d, h, k, seed=3, scale=scale)
    x = _rows(1000, d)
    want_proba, want_labels = reference.predict_proba(params, x), reference.predict(params, x)
    for size in BATCH_SIZES:
        starts = range(0, len(x), size)
        proba = np.concatenate([predict_proba(params, x[s:s + size]) for s in starts])
        labels = np.concatenate([predict(params, x[s:s + size]) for s in starts])
        np.testing.assert_array_equal(proba.view(np.uint64), want_proba.view(np.uint64),
                                      err_msg=f"batch size {size}")
        np.testing.assert_array_equal(labels, want_labels, err_msg=f"batch size {size}")
    assert k == 1 or len(np.unique(want_labels)) > 1  # a model whose answers vary


_FORWARD_CHILD = """
import hashlib
import numpy as np
from mlcore import _kernels
from mlcore.model import init_params, predict, predict_proba
x = np.random.default_rng(9).normal(0.0, 4.0, size=(300, 13))
p = init_params(13, 70, 41, seed=3, scale=0.5)
print(_kernels.isa(), hashlib.sha256(predict_proba(p, x).tobytes()).hexdigest(),
      hashlib.sha256(predict(p, x).tobytes()).hexdigest())
"""


def test_forward_gives_the_reference_bits_on_every_code_path_in_a_fresh_process():
    """The MLCORE_ISA a process starts with (as a node's does) gives the reference's bits."""
    x = np.random.default_rng(9).normal(0.0, 4.0, size=(300, 13))
    p = init_params(13, 70, 41, seed=3, scale=0.5)
    want = [hashlib.sha256(reference.predict_proba(p, x).tobytes()).hexdigest(),
            hashlib.sha256(reference.predict(p, x).tobytes()).hexdigest()]
    for path in _kernels.isa_names():
        child = subprocess.run(
            [sys.executable, "-c", _FORWARD_CHILD], cwd=REPO, capture_output=True, text=True,
            timeout=60, env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1",
                             "PYTHONPATH": str(REPO), "MLCORE_ISA": path},
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == [path, *want], path


def test_the_textbook_forward_is_close_but_not_the_kernels_bits():
    """Why the fixed-order reference exists: BLAS sums in another order (and adds the bias
    last), so `x @ w1 + b1 ...` agrees only to rounding."""
    params = init_params(16, 64, 26, seed=3, scale=0.5)
    x = _rows(1000, 16)
    textbook, exact = reference.forward(params, x)[2], reference.predict_proba(params, x)
    np.testing.assert_allclose(textbook, exact, rtol=RTOL, atol=0)
    assert np.count_nonzero(textbook != exact) > 0


def test_code_paths_exist_and_default_to_the_best():
    names = _kernels.isa_names()
    assert names[0] in ("sse2", "generic")
    assert _kernels.isa() == names[-1]
    with pytest.raises(ValueError, match="unknown code path"):
        _kernels.set_isa("avx9000")


@pytest.mark.parametrize(
    ("h", "k", "scale"), [(24, 26, 0.3), (5, 26, 1.0), (70, 26, 0.2), (256, 26, 0.1),
                          (3, 2, 1.0), (9, 41, 0.5)])
def test_every_code_path_matches_the_reference_and_gives_the_same_bits(h, k, scale):
    """Each path against the numpy reference, and all paths bit for bit against each other
    (they differ in instructions only: no FMA, the same summation order). The shapes cover
    padding (h, k not multiples of 4), several 64-unit mask words and several class tiles."""
    params, x, y = _problem(h=h, k=k)
    params = init_params(params.d, h, params.k, seed=3, scale=scale)
    kwargs = dict(epochs=3, eta=1e-3, batch_size=37, momentum=0.9, seed=5)
    want = reference.train(params, x, y, **kwargs)
    want_grad = reference.gradients(params, x, y)
    digests = {}
    previous = _kernels.set_isa(None)
    try:
        for name in _kernels.isa_names():
            _kernels.set_isa(name)
            got = train(params, x, y, **kwargs)
            _assert_close(got.params, want)
            grad = gradient(params, x, y)
            _assert_close(grad, want_grad)
            proba = predict_proba(got.params, x)
            np.testing.assert_allclose(proba, reference.forward(got.params, x)[2], rtol=RTOL)
            full = train(params, x, y, epochs=2, eta=1e-3)
            digests[name] = (_digest(got.params), _digest(grad), _digest(full.params),
                             proba.tobytes(), got.loss, got.error)
    finally:
        _kernels.set_isa(previous)
    assert len(set(digests.values())) == 1, {k: v[:3] for k, v in digests.items()}


def test_training_is_bitwise_reproducible_run_to_run():
    params, x, y = _problem()
    runs = {_digest(train(params, x, y, epochs=5, eta=1e-3).params) for _ in range(3)}
    runs_mb = {
        _digest(train(params, x, y, epochs=2, eta=1e-3, batch_size=20, momentum=0.9).params)
        for _ in range(3)
    }
    assert len(runs) == 1
    assert len(runs_mb) == 1


_CHILD = """
import hashlib, sys
import numpy as np
from mlcore.model import init_params, train
rng = np.random.default_rng(101)
x = rng.integers(0, 16, size=(300, 16)).astype(np.float64)
y = rng.integers(0, 26, size=300)
p = init_params(16, 24, 26, seed=1)
for kw in (dict(), dict(batch_size=20, momentum=0.9)):
    out = train(p, x, y, epochs=5, eta=1e-3, **kw).params
    print(hashlib.sha256(b"".join(t.tobytes() for t in out.tensors())).hexdigest())
"""


def test_training_is_bitwise_reproducible_across_processes():
    params, x, y = _problem()
    here = [
        _digest(train(params, x, y, epochs=5, eta=1e-3).params),
        _digest(train(params, x, y, epochs=5, eta=1e-3, batch_size=20, momentum=0.9).params),
    ]
    for path in _kernels.isa_names():  # the same bits whichever path the child runs
        child = subprocess.run(
            [sys.executable, "-c", _CHILD], cwd=REPO, capture_output=True, text=True,
            timeout=60, env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "2",
                             "PYTHONPATH": str(REPO), "MLCORE_ISA": path},
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == here, path


def test_training_releases_the_gil():
    params, x, y = _problem(n=1000, h=256)
    # Size the run by this CPU's speed so it lasts about half a second whatever the kernel.
    start = time.perf_counter()
    train(params, x, y, epochs=5, eta=1e-5)
    epochs = max(5, int(5 * 0.5 / (time.perf_counter() - start)))
    times: dict[str, float] = {}

    def run() -> None:
        times["start"] = time.perf_counter()
        train(params, x, y, epochs=epochs, eta=1e-5)
        times["end"] = time.perf_counter()

    worker = threading.Thread(target=run)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    during = [t for t in ticks if times["start"] + 0.05 < t < times["end"] - 0.05]
    busy_s = times["end"] - times["start"] - 0.1
    assert busy_s > 0.1, "training finished too fast to observe; raise epochs"
    # A thread holding the GIL would starve this loop; with it released we tick every ~1 ms.
    assert len(during) >= 0.3 * busy_s / 0.001, (len(during), busy_s)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(epochs=0, eta=0.1), "epochs"),
        (dict(epochs=1.5, eta=0.1), "epochs"),
        (dict(epochs=1, eta=0.0), "eta"),
        (dict(epochs=1, eta=float("nan")), "eta"),
        (dict(epochs=1, eta=float("inf")), "eta"),
        (dict(epochs=1, eta=0.1, batch_size=-1), "batch_size"),
        (dict(epochs=1, eta=0.1, momentum=1.0), "momentum"),
        (dict(epochs=1, eta=0.1, seed=-1), "seed"),
        (dict(epochs=1, eta=0.1, prox_mu=-1.0), "prox_mu"),
        (dict(epochs=1, eta=0.1, prox_mu=float("nan")), "prox_mu"),
        (dict(epochs=1, eta=0.1, prox_mu=float("inf")), "prox_mu"),
        (dict(epochs=1, eta=1e-9, prox_mu=2e6), "prox_mu"),
        (dict(epochs=1, eta=0.1, prox_mu=True), "prox_mu"),
        (dict(epochs=1, eta=0.1, prox_mu=10.5), "prox_mu \\* eta"),
    ],
)
def test_train_rejects_bad_hyperparameters(kwargs, message):
    params, x, y = _problem(n=10)
    with pytest.raises(ValueError, match=message):
        train(params, x, y, **kwargs)


def test_train_rejects_bad_data():
    params, x, y = _problem(n=10)
    with pytest.raises(ValueError, match="labels must be in"):
        train(params, x, np.full(10, 26), epochs=1, eta=0.1)
    with pytest.raises(ValueError, match="labels must be in"):
        train(params, x, np.full(10, -1), epochs=1, eta=0.1)
    with pytest.raises(ValueError, match="x must have shape"):
        train(params, x[:, :15], y, epochs=1, eta=0.1)
    with pytest.raises(ValueError, match="x must have shape"):
        train(params, x[:0], y[:0], epochs=1, eta=0.1)
    with pytest.raises(ValueError, match="y must have shape"):
        train(params, x, y[:9], epochs=1, eta=0.1)
    with pytest.raises(ValueError, match="integer labels"):
        train(params, x, y.astype(np.float64), epochs=1, eta=0.1)
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(params, bad_x, y, epochs=1, eta=0.1)


def test_params_from_tensors_rejects_mismatched_shapes():
    p = init_params(3, 4, 5, seed=1)
    with pytest.raises(ValueError, match="disagree"):
        Params.from_tensors([p.w1, p.b1[:3], p.w2, p.b2])
    with pytest.raises(ValueError, match="expected 4"):
        Params.from_tensors([p.w1, p.b1, p.w2])
    with pytest.raises(ValueError, match="expected w1"):
        Params.from_tensors([p.w1.ravel(), p.b1, p.w2, p.b2])


def test_init_params_is_seeded_uniform_and_validated():
    a, b, c = init_params(16, 24, 26, 7), init_params(16, 24, 26, 7), init_params(16, 24, 26, 8)
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a.d, a.h, a.k) == (16, 24, 26)
    for t in a.tensors():
        assert np.all(np.abs(t) <= 0.01)
    with pytest.raises(ValueError, match="h must be"):
        init_params(16, 0, 26, 1)


def test_diverging_training_raises_a_clear_error():
    params, x, y = _problem(n=50)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(params, x * 1e150, y, epochs=5, eta=1e10)


@pytest.mark.parametrize(
    ("h", "batch_size", "momentum"),
    [(132, 0, 0.0), (132, 20, 0.9), (130, 7, 0.0), (130, 0, 0.5), (64, 1, 0.0)],
)
def test_low_rank_step_gives_the_bits_of_the_gradient_buffer(isa, h, batch_size, momentum):
    """w1's step summed from the batch's rows and hidden deltas (no gw1) adds each element's
    products in gw1's order: the same bits, several blocks per batch, padded h or not, the
    caller's w1 worked in place (aligned, h % 4 == 0) or a padded copy."""
    params, x, y = _problem(n=60, d=200, h=h, k=26)
    params = init_params(200, h, 26, seed=4, scale=0.05)
    bits = []
    for low_rank in (False, True):
        p = params.copy()
        _kernels.train(x, y.astype(np.int64), *p.tensors(), 2, 1e-4, batch_size, momentum, 3,
                       low_rank=low_rank)
        bits.append(_digest(p))
    assert bits[0] == bits[1]
    got = train(params, x, y, epochs=2, eta=1e-4, batch_size=batch_size, momentum=momentum,
                seed=3)
    assert _digest(got.params) == bits[0]  # model.train chooses by memory: still these bits
    _assert_close(got.params, reference.train(params, x, y, epochs=2, eta=1e-4,
                                              batch_size=batch_size, momentum=momentum, seed=3))


_MEMORY_CHILD = """
import sys
import numpy as np
from mlcore.model import init_params, train
d, h, k = 1000, 4000, 26
p = init_params(d, h, k, seed=1)
x = np.arange(4 * d, dtype=np.float64).reshape(4, d) % 16
y = np.arange(4) % k
mu = float(sys.argv[1])
train(p, x, y, epochs=1, eta=1e-3, prox_mu=mu)  # imports, first-call allocations out of the way
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the current RSS
train(p, x, y, epochs=3, eta=1e-3, prox_mu=mu)
print((rss("VmHWM:") - before) / (8 * (d * h + h + h * k + k)))
"""


@pytest.mark.parametrize("prox_mu", [0.0, 10.0])
def test_training_a_wide_model_on_few_rows_holds_about_one_copy_of_it(prox_mu):
    """train() copies the weights once to train in; the kernels add only a few MB of their
    own (no padded copy of w1, no gradient of w1's size, no velocities without momentum;
    with FedProx, w1's anchor is the given weights read in place)."""
    require(Path("/proc/self/clear_refs").exists(), "needs Linux /proc/self/clear_refs")
    child = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(prox_mu)], cwd=REPO, capture_output=True,
        text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1",
                          "PYTHONPATH": str(REPO)},
    )
    assert child.returncode == 0, child.stderr
    extra = float(child.stdout)
    assert extra <= 1.25, f"training added {extra:.2f}x the model's size at its peak"


# ------------------------------------------------------------------------------- FedProx

# Pinned with the FMA kernels (issue 17: every product's term one fused multiply-add, so these
# differ on purpose from the pre-FMA build's, which had kept commit 1018ecb's pre-FedProx bits):
# prox_mu = 0 must keep these bits on every code path, whatever the proximal term's code adds.
_PINNED_NO_PROX = [
    ((16, 24, 26, 300), dict(epochs=3, eta=1e-3),
     "2ed521f12f3b9a486fb4c8240af3237c22b83c80c406b5524fd1f2b01720a6e1"),
    ((16, 24, 26, 300), dict(epochs=3, eta=1e-3, batch_size=37, momentum=0.9, seed=5),
     "d8fbe44078ae5128b7c096e654cceb8c136003d8aec1457d37b0c25b7105c823"),
    ((200, 132, 26, 60), dict(epochs=2, eta=1e-4, batch_size=7, momentum=0.5, seed=3),
     "93a462ac47413705dba4eaf9a22e7358963517e6ccda3c7da5f1f561be151743"),
    ((13, 70, 41, 90), dict(epochs=2, eta=1e-3, batch_size=16, seed=2),
     "7a4c6d64168a0fea2e107df9d6f16137fa81dbe9316de0bdde809c29a5cf3893"),
]


@pytest.mark.parametrize(("dims", "kwargs", "want"), _PINNED_NO_PROX)
def test_prox_mu_zero_gives_the_pinned_bits_of_no_proximal_term(isa, dims, kwargs, want):
    """mu = 0 runs the loops without the proximal term: the pinned bits, with
    prox_mu left out, given as 0.0 or as -0.0, and with starting weights handed to the
    kernel (which it ignores at 0)."""
    d, h, k, n = dims
    rng = np.random.default_rng(d * 1000 + h)
    x = rng.integers(0, 16, size=(n, d)).astype(np.float64)
    y = rng.integers(0, k, size=n)
    params = init_params(d, h, k, seed=7, scale=0.1)
    assert _digest(train(params, x, y, **kwargs).params) == want
    assert _digest(train(params, x, y, prox_mu=0.0, **kwargs).params) == want
    assert _digest(train(params, x, y, prox_mu=-0.0, **kwargs).params) == want
    p = params.copy()
    _kernels.train(x, y.astype(np.int64), *p.tensors(), kwargs["epochs"], kwargs["eta"],
                   kwargs.get("batch_size", 0), kwargs.get("momentum", 0.0),
                   kwargs.get("seed", 1), 0.0, None, 0.0, *params.tensors())
    assert _digest(p) == want


# (d, h, k, n, batch_size, momentum): the letters model full batch and mini-batch with
# momentum; padded h and k (w1's anchor a padded copy); h a multiple of 4 (w1's anchor read
# in the caller's array); batches small enough for w1's low-rank step (d = 200).
PROX_CASES = [(16, 24, 26, 300, 0, 0.0), (16, 24, 26, 300, 37, 0.9), (16, 5, 26, 300, 0, 0.5),
              (9, 70, 41, 120, 16, 0.0), (200, 132, 26, 60, 7, 0.5), (200, 130, 26, 60, 0, 0.0),
              (16, 256, 26, 100, 20, 0.9)]


@pytest.mark.parametrize(("d", "h", "k", "n", "batch_size", "momentum"), PROX_CASES)
@pytest.mark.parametrize("prox_mu", [0.5, 40.0])
def test_prox_training_matches_the_reference_and_every_code_path_gives_the_same_bits(
        d, h, k, n, batch_size, momentum, prox_mu):
    """FedProx: each path within RTOL of the numpy reference, all paths bit for bit equal,
    and the term changes the result (it is zero only at the first step, w = w_t)."""
    params, x, y = _problem(n=n, d=d, h=h, k=k)
    params = init_params(d, h, k, seed=3, scale=0.1)
    kwargs = dict(epochs=3, eta=1e-3, batch_size=batch_size, momentum=momentum, seed=5)
    want = reference.train(params, x, y, prox_mu=prox_mu, **kwargs)
    digests = {}
    previous = _kernels.set_isa(None)
    try:
        for name in _kernels.isa_names():
            _kernels.set_isa(name)
            got = train(params, x, y, prox_mu=prox_mu, **kwargs)
            _assert_close(got.params, want)
            digests[name] = (_digest(got.params), got.loss, got.error)
        plain = _digest(train(params, x, y, **kwargs).params)
    finally:
        _kernels.set_isa(previous)
    assert len(set(digests.values())) == 1, digests
    assert plain != next(iter(digests.values()))[0]


@pytest.mark.parametrize(("h", "batch_size", "momentum"), [(132, 20, 0.9), (130, 7, 0.0)])
def test_prox_low_rank_step_gives_the_bits_of_the_gradient_buffer(isa, h, batch_size,
                                                                  momentum):
    """The proximal term inside w1's low-rank step is the one of the gradient-buffer step."""
    params = init_params(200, h, 26, seed=4, scale=0.05)
    _, x, y = _problem(n=60, d=200, h=h, k=26)
    bits = []
    for low_rank in (False, True):
        p = params.copy()
        _kernels.train(x, y.astype(np.int64), *p.tensors(), 3, 1e-4, batch_size, momentum, 3,
                       0.0, low_rank, 25.0, *params.tensors())
        bits.append(_digest(p))
    assert bits[0] == bits[1]
    got = train(params, x, y, epochs=3, eta=1e-4, batch_size=batch_size, momentum=momentum,
                seed=3, prox_mu=25.0)
    assert _digest(got.params) == bits[0]


def test_prox_pulls_the_weights_towards_where_they_started():
    """The larger mu, the closer the trained weights stay to the starting ones, for every
    tensor (biases included)."""
    params, x, y = _problem()
    params = init_params(16, 24, 26, seed=3, scale=0.1)
    kwargs = dict(epochs=20, eta=1e-3, batch_size=30, momentum=0.5, seed=2)
    distances = []
    for mu in (0.0, 50.0, 500.0):
        out = train(params, x, y, prox_mu=mu, **kwargs).params
        distances.append([float(np.linalg.norm(t - t0))
                          for t, t0 in zip(out.tensors(), params.tensors(), strict=True)])
    for tensor in range(4):
        assert distances[0][tensor] > distances[1][tensor] > distances[2][tensor] > 0


def test_prox_kernel_entry_checks_its_starting_weights():
    params, x, y = _problem(n=10)
    y = y.astype(np.int64)
    p = params.copy()
    with pytest.raises(ValueError, match="needs the starting weights"):
        _kernels.train(x, y, *p.tensors(), 1, 1e-3, 0, 0.0, 1, 0.0, None, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        _kernels.train(x, y, *p.tensors(), 1, 1e-3, 0, 0.0, 1, 0.0, None, 1.0,
                       params.w1[:, :4].copy(), params.b1, params.w2, params.b2)
    with pytest.raises(ValueError, match="w1 itself"):
        _kernels.train(x, y, *p.tensors(), 1, 1e-3, 0, 0.0, 1, 0.0, None, 1.0, *p.tensors())
