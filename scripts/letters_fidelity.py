#!/usr/bin/env python3
"""How faithful are generated letters? Train one MLP on generated rows and one on real rows.

Both models (plain numpy 16-64-26 MLP, mini-batch SGD with momentum on standardised inputs,
same budget and seed) are evaluated on the real data's last 4,000 rows. Prints both
validation errors, a per-attribute mean/std table (generated vs real) and a final
key=value line. The real UCI file stays outside the repository: pass it with --data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from letters.attributes import NAMES  # noqa: E402
from letters.generator import DEFAULT_SEED, generate  # noqa: E402
from mlcore.data import DataError, read_data_file  # noqa: E402
from runtime.cli import run_cli  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "letter-recognition.data"
N_TRAIN, N_VALIDATE = 16_000, 4_000


def train_mlp(
    x: np.ndarray, y: np.ndarray, *, hidden: int = 64, epochs: int = 30, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mini-batch SGD with momentum, softmax cross-entropy; returns (w1, b1, w2, b2)."""
    rng = np.random.default_rng(seed)
    d, k = x.shape[1], 26
    w1 = rng.normal(0, 1 / np.sqrt(d), (d, hidden))
    w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, k))
    b1, b2 = np.zeros(hidden), np.zeros(k)
    params = [w1, b1, w2, b2]
    vel = [np.zeros_like(p) for p in params]
    eta, mom, batch = 0.05, 0.9, 32
    for epoch in range(epochs):
        lr = eta * 0.5 * (1 + np.cos(np.pi * epoch / epochs))  # cosine decay
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb, yb = x[idx], y[idx]
            h = np.tanh(xb @ w1 + b1)
            z = h @ w2 + b2
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1
            p /= len(yb)
            dh = (p @ w2.T) * (1 - h * h)
            grads = [xb.T @ dh, dh.sum(0), h.T @ p, p.sum(0)]
            for param, v, g in zip(params, vel, grads, strict=True):
                v *= mom
                v -= lr * g
                param += v
    return w1, b1, w2, b2


def error_rate(params, x: np.ndarray, y: np.ndarray) -> float:
    w1, b1, w2, b2 = params
    return float(np.mean(np.argmax(np.tanh(x @ w1 + b1) @ w2 + b2, axis=1) != y))


def fit_and_score(xtr, ytr, xva, yva, seed: int = 0) -> float:
    """Standardise with the training rows' statistics, train, return validation error."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    params = train_mlp((xtr - mu) / sd, ytr, seed=seed)
    return error_rate(params, (xva - mu) / sd, yva)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    "data_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="The UCI letter-recognition.data file (kept outside the repository).",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Generator seed.")
def cli(data_path: Path, seed: int) -> None:
    """Compare a model trained on generated letters with one trained on real letters."""
    if not data_path.is_file():
        raise click.ClickException(
            f"real data not found at {data_path}; pass --data PATH to letter-recognition.data"
        )
    try:
        real = read_data_file(data_path, n_classes=26)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    if real.n_rows < N_TRAIN + N_VALIDATE or real.n_features != 16:
        raise click.ClickException(f"{data_path.name}: expected 20,000 rows of 16 attributes")
    xr, yr = real.x, real.y
    xva, yva = xr[N_TRAIN : N_TRAIN + N_VALIDATE], yr[N_TRAIN : N_TRAIN + N_VALIDATE]
    gx, gy = generate(seed, N_TRAIN)
    gx = gx.astype(np.float64)
    gen_err = fit_and_score(gx, gy, xva, yva)
    real_err = fit_and_score(xr[:N_TRAIN], yr[:N_TRAIN], xva, yva)
    real_tr = xr[:N_TRAIN]
    click.echo(f"{'attribute':<9} {'gen mean':>9} {'real mean':>9} {'gen std':>8} {'real std':>8}")
    for j, name in enumerate(NAMES):
        click.echo(
            f"{name:<9} {gx[:, j].mean():9.2f} {real_tr[:, j].mean():9.2f}"
            f" {gx[:, j].std():8.2f} {real_tr[:, j].std():8.2f}"
        )
    click.echo(f"validation error on real rows 16001-20000, trained on generated: {gen_err:.4f}")
    click.echo(f"validation error on real rows 16001-20000, trained on real:      {real_err:.4f}")
    gap = 100 * (gen_err - real_err)
    click.echo(f"generated_error={gen_err:.4f} real_error={real_err:.4f} gap_points={gap:.1f}")


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "letters_fidelity.py", argv)


if __name__ == "__main__":
    main()
