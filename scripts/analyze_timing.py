"""Compare runs from their timing.txt files: a table, summary.csv and three plots.

    .venv/bin/python scripts/analyze_timing.py runs/*/timing.txt --out analysis/

Each TIMING file is one run, labelled by its parent directory's name (or --labels).
Writes into --out: summary.csv (one row per run), round_times.png (round wall time per
round), task_durations.png (task seconds per node) and time_breakdown.png (where the
task time went: load delay, compute, queue wait, transfer). The analysis itself lives
in scripts/timing_analysis.py.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing_analysis import (  # noqa: E402
    PART_LABELS,
    PARTS,
    SUMMARY_COLUMNS,
    RunSummary,
    format_table,
    round_times,
    summarise,
    summary_row,
    task_durations,
)

from client.timing import read_timing  # noqa: E402
from runtime.cli import require_module, run_cli  # noqa: E402

COLORS = {"load_delay_s": "#d62728", "compute_s": "#2ca02c", "wait_s": "#ff7f0e",
          "transfer_s": "#1f77b4"}


def _labels(paths: list[Path], given: str | None) -> list[str]:
    """--labels if given, else the parent directory names, made unique with #2, #3..."""
    if given:
        labels = [s.strip() for s in given.split(",")]
        if len(labels) != len(paths):
            raise click.BadParameter(
                f"{len(labels)} labels for {len(paths)} timing files", param_hint="--labels")
        return labels
    seen: dict[str, int] = {}
    labels = []
    for path in paths:
        base = path.resolve().parent.name or path.stem
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return labels


def _read(path: Path) -> list[dict[str, str]]:
    try:
        _, rows = read_timing(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read: {exc}") from None
    except ValueError as exc:  # a row with the wrong number of cells
        raise click.ClickException(f"{path}: not a timing.txt ({exc})") from None
    if rows and not {"kind", "round", "round_s"} <= rows[0].keys():
        raise click.ClickException(f"{path}: not a timing.txt (no kind/round/round_s columns)")
    if not any(r["kind"] == "round" for r in rows):
        raise click.ClickException(f"{path}: no completed rounds in this file")
    return rows


def plot_round_times(runs: list[tuple[str, list[dict[str, str]]]], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, rows in runs:
        points = round_times(rows)
        ax.plot([r for r, _ in points], [s for _, s in points], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("round wall time (s, client)")
    ax.set_title("Round time per round")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(title="run")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_task_durations(runs: list[tuple[str, list[dict[str, str]]]], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(max(4.0 * len(runs), 6), 4.5), dpi=110,
                             sharey=True, squeeze=False)
    for ax, (label, rows) in zip(axes[0], runs, strict=True):
        by_node = task_durations(rows)
        names = list(by_node)
        ax.boxplot([by_node[n] for n in names], showfliers=False)
        for i, name in enumerate(names, start=1):  # every task as a dot over its box
            values = by_node[name]
            jitter = [i + 0.15 * ((k % 7) - 3) / 3 for k in range(len(values))]
            ax.scatter(jitter, values, s=10, alpha=0.5, color="#1f77b4", zorder=3)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([n.rsplit(":", 1)[-1] for n in names], rotation=45)
        ax.set_xlabel("node (port)")
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("task time (s, coordinator: start to result)")
    axes[0][0].set_ylim(bottom=0)
    fig.suptitle("Task duration per node")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_breakdown(summaries: list[RunSummary], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(1.6 * len(summaries) + 3, 6), 4.5), dpi=110)
    labels = [s.label for s in summaries]
    bottom = [0.0] * len(summaries)
    for part in PARTS:
        per_task = [s.part_totals_s[part] / s.tasks if s.tasks else 0.0 for s in summaries]
        bars = ax.bar(labels, per_task, bottom=bottom, label=PART_LABELS[part],
                      color=COLORS[part])
        for bar, s, base, value in zip(bars, summaries, bottom, per_task, strict=True):
            if s.share(part) >= 0.08:
                ax.text(bar.get_x() + bar.get_width() / 2, base + value / 2,
                        f"{s.share(part):.0%}", ha="center", va="center", fontsize=8,
                        color="white")
        bottom = [b + v for b, v in zip(bottom, per_task, strict=True)]
    ax.set_ylabel("mean seconds per task")
    ax.set_title("Where task time went (share of summed task time)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write_summary_csv(summaries: list[RunSummary], out: Path) -> None:
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        for s in summaries:
            writer.writerow(summary_row(s))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("timing", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Directory for summary.csv and the PNG plots.")
@click.option("--labels", default=None, help="Comma-separated run labels, one per file "
              "[default: each file's parent directory name].")
def cli(timing: tuple[Path, ...], out_dir: Path, labels: str | None) -> None:
    """Summarise and plot one or more timing.txt files (one per run)."""
    require_module("matplotlib").use("Agg")
    paths = list(timing)
    names = _labels(paths, labels)
    runs = [(name, _read(path)) for name, path in zip(names, paths, strict=True)]
    summaries = [summarise(name, rows) for name, rows in runs]
    out_dir.mkdir(parents=True, exist_ok=True)
    click.echo(format_table(summaries))
    write_summary_csv(summaries, out_dir / "summary.csv")
    plot_round_times(runs, out_dir / "round_times.png")
    plot_task_durations(runs, out_dir / "task_durations.png")
    plot_breakdown(summaries, out_dir / "time_breakdown.png")
    click.echo(f"\nwrote {out_dir / 'summary.csv'}, round_times.png, task_durations.png, "
               "time_breakdown.png")


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "analyze_timing.py", argv)


if __name__ == "__main__":
    main()
