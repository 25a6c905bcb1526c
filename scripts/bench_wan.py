"""Round time across emulated WAN links, beside a model of the ideal.

Puts the coordinator, --nodes compute nodes and the client on hosts of their own
(scripts/hosts.py: network namespaces on one bridge; needs Linux, root and iproute2) and
runs the seed's workload (16 letters shards, 75 full-batch epochs, h = 24) and the same
with h = 256 at every round trip (coordinator <-> node: the relay in front of each node)
and every rate (tbf on every host's link, both ways). The client sits beside the
coordinator: its link has the rate but no added delay.

The ideal of a setting is compute + 1 RTT + bytes / rate, where compute is the same
workload's round on the same hosts with no delay and unshaped links (protocol costs at
zero latency included), rescaled by the nodes' training seconds of the run against the
base's (the machine is shared: training slowed by other load is no network cost), and
bytes are the most any one link carried in one direction during a round, counted on the
link itself. Beside them, the coordinator's own counts over the run's rounds (round 1
sends the shards too): bytes sent to nodes (bytes_to_nodes) and weights uploads
(weights_uploads: one per node and round when each node gets them once). A
setting meets the goal when its median steady round (the first round, which uploads the
shards, left out) is within --goal times its ideal.

Usage: .venv/bin/python scripts/bench_wan.py [--rtts-ms 0,10,50,200] [--rates-mbit 1000,50]
Writes wan.csv and wan.png to --out (default: a new temporary directory); ends with one
key=value line.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
from hosts import Network, Shape, why_not  # noqa: E402
from local_cluster import REPO  # noqa: E402
from machine import cpu_model  # noqa: E402

from client.timing import read_timing  # noqa: E402
from idl.gen import Coordinator  # noqa: E402
from idl.rpc import Address, connect  # noqa: E402
from runtime.cli import FiniteRange, ListType, require_module, run_cli  # noqa: E402

CLIENT_TIMEOUT_S = 900.0


@dataclass
class Measured:
    hidden: int
    rtt_s: float
    rate_bit_s: float | None
    round_s: float  # median steady round
    link_bytes: float  # most bytes one link carried one way in a steady round (median)
    node_compute_s: float  # the nodes' training seconds in a steady round, summed (median)
    bytes_to_nodes: int  # the coordinator's bytes_to_nodes counter over the run's rounds
    weights_uploads: int  # its weights_uploads counter over the run's rounds


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=REPO, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=REPO, check=False).stdout
    return (done.stdout.strip() or "unknown") + ("+dirty" if dirty.strip() else "")


def coordinator_counters(address: Address) -> dict[str, int]:
    """The coordinator's status counters (bytes_to_nodes, weights_uploads, ...)."""
    conn = connect(Coordinator.Client, address, 10.0)
    try:
        return dict(conn.client.status("").counters or {})
    finally:
        conn.close()


def run_setting(workdir: Path, data: Path, n_nodes: int, rounds: int, hidden: int,
                rtt_s: float, rate_bit_s: float | None) -> Measured:
    """One training run on fresh hosts; round times from timing.txt, bytes per round from
    the links' counters read as the client reports each round."""
    node_shape = Shape(rtt_s=rtt_s, rate_bit_s=rate_bit_s)
    near_shape = Shape(rate_bit_s=rate_bit_s)
    with Network(workdir / "hosts") as net:
        node_hosts = [net.add_host(f"node{i}", node_shape) for i in range(n_nodes)]
        nodes = [net.start_node(h, "--load-delay-s", "0") for h in node_hosts]
        coord_host = net.add_host("coord", near_shape)
        coordinator = net.start_coordinator(coord_host, "round-robin",
                                            [n.address for n in nodes])
        client_host = net.add_host("client", near_shape)
        hosts = [*node_hosts, coord_host, client_host]
        timing = workdir / "timing.txt"
        argv = net.client_argv(client_host, coordinator.address, str(data), str(rounds), "75",
                               str(hidden), "1e-4", "--timing", str(timing))
        snapshots = [[b for h in hosts for b in net.link_bytes(h)]]
        counters = [coordinator_counters(coordinator.address)]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO)
        timer = threading.Timer(CLIENT_TIMEOUT_S, client.kill)  # bounds the run
        timer.start()
        try:
            assert client.stdout is not None
            for line in client.stdout:
                if line.startswith("round "):
                    snapshots.append([b for h in hosts for b in net.link_bytes(h)])
            err = client.stderr.read() if client.stderr else ""
            code = client.wait()
        finally:
            timer.cancel()
            if client.poll() is None:
                client.kill()
                client.wait()
        if code != 0:
            raise click.ClickException(f"the client failed (h={hidden}, rtt={rtt_s}s): "
                                       f"{' '.join(err.split())[-500:]}")
        # read once the client is done: a read at a round's end races the next round's start
        counters.append(coordinator_counters(coordinator.address))
    rows = read_timing(timing)[1]
    round_s = [float(r["round_s"]) for r in rows if r["kind"] == "round"]
    per_round = [max(b - a for a, b in zip(before, after, strict=True))
                 for before, after in zip(snapshots, snapshots[1:], strict=False)]
    steady = slice(1, None) if len(round_s) > 1 else slice(None)
    compute = [sum(float(r["compute_s"]) for r in rows
                   if r["kind"] == "task" and r["round"] == str(k + 1))
               for k in range(len(round_s))]
    sent = {key: counters[-1].get(key, 0) - counters[0].get(key, 0)
            for key in ("bytes_to_nodes", "weights_uploads")}
    return Measured(hidden, rtt_s, rate_bit_s, statistics.median(round_s[steady]),
                    statistics.median(per_round[steady] or per_round),
                    statistics.median(compute[steady]),
                    sent["bytes_to_nodes"], sent["weights_uploads"])


def compute_s(m: Measured, base: Measured) -> float:
    """The base round, its node compute rescaled to this run's: the machine is shared, and
    training slowed by someone else's load is no cost of the network."""
    return base.round_s * m.node_compute_s / base.node_compute_s


def ideal_s(m: Measured, base: Measured) -> float:
    transfer = m.link_bytes * 8 / m.rate_bit_s if m.rate_bit_s else 0.0
    return compute_s(m, base) + m.rtt_s + transfer


def plot(results: list[tuple[Measured, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = sorted({(m.hidden, m.rate_bit_s or 0.0) for m, _ in results})
    for hidden, rate in series:
        points = sorted((m.rtt_s * 1000, m.round_s, ideal) for m, ideal in results
                        if m.hidden == hidden and (m.rate_bit_s or 0.0) == rate)
        label = f"h={hidden}, {rate / 1e6:g} Mbit/s"
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
        ax.plot([p[0] for p in points], [p[2] for p in points], "--", color=line.get_color(),
                alpha=0.6)
    ax.set_xlabel("round trip coordinator <-> node (ms)")
    ax.set_ylabel("round time (s); dashed: ideal")
    ax.set_title("fedcluster round time across emulated WAN links")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               help=__doc__.split("\n\n")[0])
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Data directory [the default letters data].")
@click.option("--nodes", "n_nodes", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Compute nodes, a host each.")
@click.option("--rounds", type=click.IntRange(2, 20), default=4, show_default=True,
              help="Rounds per run (the first is left out of the medians).")
@click.option("--hidden", "hiddens", type=ListType(click.IntRange(1, 4096)), default="24,256",
              show_default=True, help="Hidden sizes, comma-separated.")
@click.option("--rtts-ms", type=ListType(FiniteRange(0.0, 2000.0)), default="0,10,50,200",
              show_default=True, help="Round trips coordinator <-> node, comma-separated.")
@click.option("--rates-mbit", type=ListType(FiniteRange(0.1, 100000.0, min_open=False)),
              default="1000,50", show_default=True, help="Rates per link, comma-separated.")
@click.option("--goal", type=FiniteRange(1.0, 100.0), default=1.15, show_default=True,
              help="A setting meets the goal within this factor of its ideal.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for wan.csv, wan.png and the runs [a new temporary directory].")
def cli(data: Path | None, n_nodes: int, rounds: int, hiddens: list[int], rtts_ms: list[float],
        rates_mbit: list[float], goal: float, out: Path | None) -> None:
    """Measure round time across emulated WAN links against compute + 1 RTT + bytes / rate."""
    import letters

    reason = why_not()
    if reason:
        raise click.ClickException(f"cannot emulate hosts here: {reason}")
    require_module("matplotlib")  # before the runs, not after them
    data = data or letters.default_data_dir()
    out = out or Path(tempfile.mkdtemp(prefix="bench-wan-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores; commit {commit()}")
    probe = Network(out / "probe")
    print(f"emulation: delay by {probe.delay_by}, rate by tbf; {n_nodes} node hosts, "
          f"coordinator and client hosts; {rounds} rounds of 16 shards x 75 epochs; out {out}")
    results: list[tuple[Measured, float]] = []
    header = (f"{'h':>4} {'rtt ms':>6} {'Mbit/s':>7} {'round s':>8} {'compute s':>9} "
              f"{'KB/round':>9} {'ideal s':>8} {'ratio':>6} {'KB to nodes/run':>15} "
              f"{'uploads/run':>11}  verdict")
    for hidden in hiddens:
        base = run_setting(out / f"h{hidden}-base", data, n_nodes, rounds, hidden, 0.0, None)
        print(f"\nh = {hidden}: compute (no delay, unshaped) {base.round_s:.3f} s a round, "
              f"{base.link_bytes / 1e3:.0f} KB on the busiest link")
        print(header)
        for rate in rates_mbit:
            for rtt_ms in rtts_ms:
                name = f"h{hidden}-rtt{rtt_ms:g}-rate{rate:g}"
                m = run_setting(out / name, data, n_nodes, rounds, hidden, rtt_ms / 1000,
                                rate * 1e6)
                ideal = ideal_s(m, base)
                results.append((m, ideal))
                ratio = m.round_s / ideal
                verdict = "ok" if ratio <= goal else f"MISSED by {ratio / goal:.2f}x"
                print(f"{hidden:>4} {rtt_ms:>6g} {rate:>7g} {m.round_s:>8.3f} "
                      f"{compute_s(m, base):>9.3f} {m.link_bytes / 1e3:>9.0f} {ideal:>8.3f} "
                      f"{ratio:>6.2f} {m.bytes_to_nodes / 1e3:>15.0f} "
                      f"{m.weights_uploads:>11}  {verdict}", flush=True)
    table = out / "wan.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["hidden", "rtt_ms", "rate_mbit", "round_s", "link_bytes_per_round",
                         "ideal_s", "ratio", "within_goal", "bytes_to_nodes_run",
                         "weights_uploads_run"])
        for m, ideal in results:
            writer.writerow([m.hidden, f"{m.rtt_s * 1000:g}", f"{(m.rate_bit_s or 0) / 1e6:g}",
                             f"{m.round_s:.4f}", f"{m.link_bytes:.0f}", f"{ideal:.4f}",
                             f"{m.round_s / ideal:.3f}", m.round_s / ideal <= goal,
                             m.bytes_to_nodes, m.weights_uploads])
    plot(results, out / "wan.png")
    ratios = [m.round_s / ideal for m, ideal in results]
    worst = max(range(len(results)), key=lambda i: ratios[i])
    wm = results[worst][0]
    print(f"\ntable {table}, plot {out / 'wan.png'}; {time.monotonic() - started:.0f} s")
    print(f"settings={len(results)} within_goal={sum(r <= goal for r in ratios)} goal={goal:g} "
          f"worst_ratio={ratios[worst]:.3f} worst=h{wm.hidden}/rtt{wm.rtt_s * 1000:g}ms/"
          f"{(wm.rate_bit_s or 0) / 1e6:g}Mbit commit={commit()}")


def main(argv: list[str] | None = None) -> None:
    run_cli(cli, "bench_wan.py", argv)


if __name__ == "__main__":
    main()
