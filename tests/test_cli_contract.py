"""Every command and script: `--help` works, and a malformed value is one `error:` line.

The scripts are enumerated from scripts/*.py, so a new script cannot be left out: it
needs an entry in MALFORMED (or in LIBRARIES, if it is a module other scripts import).
All the processes run at once, so the whole file takes a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from harness import REPO
from runtime.cli import FiniteRange, RenamedOption, old_unit_alias

SCRIPTS = REPO / "scripts"
MISSING = "/nonexistent/fedcluster"

# Module commands: (argv after `python`, one malformed value).
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    "compute_node": (["-m", "compute_node"], ["0", "0.5", "--max-shard-cache-mb", "inf"]),
    "coordinator": (["-m", "coordinator"], ["0", "2", "--max-shard-cache-mb", "inf"]),
    "client (seed form)": (["-m", "client"], ["localhost", "9095", ".", "3", "75", "24", "nan"]),
    "client train": (["-m", "client", "train"],
                     ["localhost", "9095", ".", "3", "75", "24", "1e-4", "--policy", ""]),
    "client status": (["-m", "client", "status"], ["127.0.0.1:1", "--timeout-s", "nan"]),
    "client predict": (["-m", "client", "predict"],
                       ["127.0.0.1:1", "README.md", "README.md", "--deadline-s", "nan"]),
    "client evaluate": (["-m", "client", "evaluate"],
                        ["127.0.0.1:1", "README.md", ".", "--which", "none"]),
    "letters": (["-m", "letters"], ["no-such-command"]),
    "letters generate": (["-m", "letters", "generate"], [MISSING, "--samples", "x"]),
    "letters split": (["-m", "letters", "split"], [MISSING, MISSING]),
    "letters stats": (["-m", "letters", "stats"], [MISSING]),
    "gateway": (["-m", "gateway"], ["0", "--coordinators", "127.0.0.1:1", "--data-root", ".",
                                    "--rate-per-s", "nan"]),
}

# Every script with a command line, and one malformed value for it.
MALFORMED: dict[str, list[str]] = {
    "analyze_timing.py": [f"{MISSING}/timing.txt", "--out", MISSING],
    "bench_mlcore.py": ["--rows", "0"],
    "bench_round.py": ["--nodes", "1,x"],
    "bench_scale.py": ["--node-counts", "10,a"],
    "bench_serving.py": ["--concurrency", "1,x"],
    "bench_time_to_accuracy.py": ["--target", "nan"],
    "bench_wan.py": ["--rtts-ms", "10,x"],
    "compare_ensemble.py": ["--repeats", "0"],
    "experiment_noniid.py": ["--alphas", "0.1,x", "--out", MISSING],
    "experiment_policies.py": ["--load-delay-s", "inf"],
    "experiment_robust.py": ["--modes", "sign-flip,bogus"],
    "letters_fidelity.py": ["--seed", "x"],
    "loadtest.py": ["--concurrency", "1,x", "--out", MISSING],
    "local_cluster.py": ["--loads", "0.1,x"],
    "sim_nodes.py": ["--delay-s", "nan"],
}
# More malformed values for a script's other options: name -> (script, arguments).
MALFORMED_MORE: dict[str, tuple[str, list[str]]] = {
    "loadtest.py --gateway": ("loadtest.py", ["--gateway", "ftp://host:1", "--out", MISSING]),
    "loadtest.py --http-mix": ("loadtest.py", ["--http-mix", "1,2", "--out", MISSING]),
    "loadtest.py --rounds": ("loadtest.py", ["--rounds", "0", "--out", MISSING]),
}
# Modules other scripts import; they have no command line.
LIBRARIES = {"client_runs.py", "hosts.py", "machine.py", "timing_analysis.py"}


def script_names() -> list[str]:
    return sorted(p.name for p in SCRIPTS.glob("*.py"))


def invocations() -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv prefix, malformed arguments), for every command and script."""
    every = dict(COMMANDS)
    for name, args in MALFORMED.items():
        every[f"scripts/{name}"] = ([str(SCRIPTS / name)], args)
    for name, (script, args) in MALFORMED_MORE.items():
        every[f"scripts/{name}"] = ([str(SCRIPTS / script)], args)
    return every


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], subprocess.CompletedProcess]:
    """Every invocation with --help and with its malformed value, run in parallel."""
    jobs = {}
    for name, (prefix, malformed) in invocations().items():
        jobs[(name, "help")] = [*prefix, "--help"]
        jobs[(name, "malformed")] = [*prefix, *malformed]
    with ThreadPoolExecutor(max_workers=6) as pool:
        done = dict(zip(jobs, pool.map(run, jobs.values()), strict=True))
    return done


def test_every_script_is_covered() -> None:
    names = set(script_names())

    assert names == set(MALFORMED) | LIBRARIES, "add the new script to MALFORMED"
    assert {script for script, _ in MALFORMED_MORE.values()} <= set(MALFORMED)
    for name in LIBRARIES:
        assert '__name__ == "__main__"' not in (SCRIPTS / name).read_text()


@pytest.mark.parametrize("name", sorted(invocations()))
def test_help_shows_usage_and_exits_zero(results, name: str) -> None:
    done = results[(name, "help")]

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: "), done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", sorted(invocations()))
def test_malformed_value_is_one_error_line(results, name: str) -> None:
    done = results[(name, "malformed")]

    lines = done.stderr.splitlines()
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


INTROSPECT = r"""
import importlib.util, json, sys
from pathlib import Path
import click
from runtime.cli import FiniteRange, ListType

scripts = Path(sys.argv[1])
sys.path.insert(0, str(scripts))
commands = {}
for module in ("compute_node", "coordinator", "client", "letters", "gateway"):
    commands[module] = importlib.import_module(f"{module}.__main__").cli
for name in json.loads(sys.argv[2]):
    spec = importlib.util.spec_from_file_location(name[:-3], scripts / name)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands[name] = module.cli

def walk(prefix, command):
    yield prefix, command
    for sub_name, sub in getattr(command, "commands", {}).items():
        yield from walk(f"{prefix} {sub_name}", sub)

not_finite = []
for name, command in commands.items():
    for where, cmd in walk(name, command):
        for param in cmd.params:
            kind = param.type.item if isinstance(param.type, ListType) else param.type
            if isinstance(kind, click.types.FloatParamType) and not isinstance(kind, FiniteRange):
                not_finite.append(f"{where} {param.name}")
print(json.dumps({"not_finite": not_finite, "heavy": sorted(
    m for m in ("matplotlib", "tqdm", "prometheus_client") if m in sys.modules)}))
"""


def test_every_float_option_is_finite_and_imports_stay_light() -> None:
    done = run(["-c", INTROSPECT, str(SCRIPTS), json.dumps(sorted(MALFORMED))])

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["not_finite"] == []  # use runtime.cli.FiniteRange: FloatRange takes nan, inf
    assert "matplotlib" not in found["heavy"]  # import it inside the function that plots


def test_a_missing_matplotlib_is_one_line_saying_how_to_install_it(tmp_path: Path) -> None:
    timing = tmp_path / "timing.txt"
    timing.write_text("")
    blocked = ("import runpy, sys; sys.modules['matplotlib'] = None; "
               f"sys.argv = ['analyze_timing.py', {str(timing)!r}, '--out', {str(tmp_path)!r}]; "
               f"runpy.run_path({str(SCRIPTS / 'analyze_timing.py')!r}, run_name='__main__')")

    done = run(["-c", blocked])

    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        "error: this script needs matplotlib: .venv/bin/pip install -e '.[bench]'"
    ]


def test_an_old_option_name_still_works_and_is_hidden() -> None:
    from compute_node.__main__ import cli

    ctx = cli.make_context("node", ["0", "0.5", "--load-delay", "2", "--extra-latency", "0.5"])
    shown = CliRunner().invoke(cli, ["--help"]).output

    assert ctx.params["load_delay_s"] == 2.0 and ctx.params["extra_latency_s"] == 0.5
    assert "--load-delay-s" in shown and "--load-delay " not in shown
    assert "--extra-latency " not in shown


def test_an_old_name_in_another_unit_is_converted() -> None:
    @click.command()
    @click.option("--delay-s", type=FiniteRange(min=0), default=0.0, cls=RenamedOption)
    @old_unit_alias("--delay-ms", "delay_s", 1e-3, FiniteRange(min=0))
    def show(delay_s: float) -> None:
        click.echo(repr(delay_s))

    runner = CliRunner()

    assert runner.invoke(show, ["--delay-ms", "250"]).output == "0.25\n"
    assert runner.invoke(show, ["--delay-s", "0.5"]).output == "0.5\n"
    assert "--delay-ms" not in runner.invoke(show, ["--help"]).output
    assert runner.invoke(show, ["--delay-ms", "1", "--delay-s", "1"]).exit_code != 0


def test_client_status_is_a_subcommand_and_the_seed_form_needs_none() -> None:
    from client.__main__ import cli

    runner = CliRunner()
    seed_form = ["localhost", "9095", ".", "3", "75", "24", "nan"]

    positional = runner.invoke(cli, seed_form)
    spelled_out = runner.invoke(cli, ["train", *seed_form])
    status = runner.invoke(cli, ["status", "127.0.0.1:1", "--count", "0"])

    assert positional.exit_code == spelled_out.exit_code == 2
    assert "Invalid value for 'ETA'" in positional.output
    assert positional.output == spelled_out.output
    assert status.exit_code == 2 and "Invalid value for '--count'" in status.output
