"""What predict and evaluate show: label lines, the per-class table, its CSV and the
confusion-matrix plot (matplotlib, imported only to draw)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mlcore.servable import Scores


def prediction_lines(names: Sequence[str], labels: np.ndarray,
                     probabilities: np.ndarray | None) -> Iterator[str]:
    """One line per row: its class name; with probabilities, a CSV header then
    `name,p_0,...,p_k-1`, each float written as repr (it reads back to the same bits)."""
    if probabilities is None:
        for label in labels.tolist():
            yield names[label]
        return
    yield ",".join(["label", *names])
    for label, row in zip(labels.tolist(), probabilities.tolist(), strict=True):
        yield ",".join([names[label], *map(repr, row)])


def per_class(scores: Scores) -> list[tuple[int, int, int, float | None, float | None]]:
    """Per class: (rows of it, rows predicted as it, correct, precision, recall); a ratio
    with nothing to divide by is None."""
    confusion = scores.confusion
    table = []
    for c in range(confusion.shape[0]):
        rows, predicted, correct = (int(confusion[c].sum()), int(confusion[:, c].sum()),
                                    int(confusion[c, c]))
        table.append((rows, predicted, correct, correct / predicted if predicted else None,
                      correct / rows if rows else None))
    return table


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def evaluation_text(scores: Scores, names: Sequence[str]) -> str:
    """Error, mean loss and the per-class precision/recall table, as printed."""
    lines = [f"error {scores.error:.2%} ({scores.n_errors} of {scores.n_rows} rows)  "
             f"mean loss {scores.mean_loss:.4f}"]
    width = max(5, *(len(n) for n in names))
    lines.append(f"{'class':<{width}}  {'rows':>6}  {'predicted':>9}  {'precision':>9}  "
                 f"{'recall':>7}")
    for name, (rows, predicted, _, precision, recall) in zip(names, per_class(scores),
                                                               strict=True):
        lines.append(f"{name:<{width}}  {rows:>6}  {predicted:>9}  {_ratio(precision):>9}  "
                     f"{_ratio(recall):>7}")
    return "\n".join(lines)


def write_table_csv(path: Path, scores: Scores, names: Sequence[str]) -> None:
    """The per-class table as CSV (precision/recall empty where undefined)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["class", "rows", "predicted", "correct", "precision", "recall"])
        for name, (rows, predicted, correct, precision, recall) in zip(
                names, per_class(scores), strict=True):
            out.writerow([name, rows, predicted, correct,
                          "" if precision is None else repr(precision),
                          "" if recall is None else repr(recall)])


def plot_confusion(path: Path, scores: Scores, names: Sequence[str], title: str) -> None:
    """Confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    size = max(4.0, 0.32 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    shown = np.ma.masked_equal(scores.confusion, 0)
    image = ax.imshow(shown, cmap="viridis", interpolation="nearest", vmin=0)
    ax.set_xticks(range(k), names, fontsize=7 if k > 12 else 9)
    ax.set_yticks(range(k), names, fontsize=7 if k > 12 else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="rows", shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
