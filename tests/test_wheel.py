"""A non-editable install works outside the checkout (issue 11, point 8).

`pip install .` of a copy of the source tree into a fresh venv, then, from a directory
that is neither the checkout nor the source copy: the installed console scripts start two
compute nodes and a coordinator, and the client trains one round on the default letters
data that the wheel carries.

The fresh venv borrows its third-party packages (numpy, thrift, click, ... and the build
requirements, hence --no-build-isolation) from the interpreter running the tests through a
.pth line, so the test needs no network and takes seconds; a .pth *line* only appends a
directory to sys.path, it does not run that directory's own .pth files, so the checkout's
editable install stays invisible to the fresh venv (asserted below).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require

from harness import REPO

pytestmark = pytest.mark.slow

PACKAGE_DIRS_OUTSIDE_WHEEL = {"tests", "scripts", "docs", "build", "dist"}
# What a fresh clone would not have: build products and caches (.gitignore).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.c",
    ".pytest_cache", ".ruff_cache", ".mypy_cache", "out", "timing.txt", "*.npz",
)
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path
    install_log: str

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1"}


def source_packages(root: Path) -> set[str]:
    """Dotted names of every package in the tree that ships (dirs with an __init__.py)."""
    found = set()
    for init in root.rglob("__init__.py"):
        parts = init.parent.relative_to(root).parts
        if parts and parts[0] not in PACKAGE_DIRS_OUTSIDE_WHEEL and not parts[0].startswith("."):
            found.add(".".join(parts))
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """`pip install .` (not editable) of a copy of the working tree into a fresh venv."""
    require(shutil.which("gcc") or shutil.which("cc"), "no C compiler to build mlcore._kernels")
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(venv)}))
    own_site = sysconfig.get_path("purelib")
    (site_packages / "borrowed-from-test-venv.pth").write_text(own_site + "\n")

    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
         "--no-build-isolation", "--disable-pip-version-check", "."],
        cwd=source, env=clean_env(), capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    return Installed(venv, site_packages, done.stdout + done.stderr)


def test_install_prints_no_package_data_warnings(installed: Installed) -> None:
    assert "absent from the packages configuration" not in installed.install_log
    assert "BuildBackendWarning" not in installed.install_log


def test_wheel_holds_every_package_the_contract_the_kernels_and_the_letters(
    installed: Installed,
) -> None:
    site = installed.site_packages

    missing = [p for p in sorted(source_packages(REPO))
               if not (site / p.replace(".", "/") / "__init__.py").is_file()]

    assert not missing, f"packages not in the wheel ([tool.setuptools] packages): {missing}"
    for data in ["idl/cluster.thrift", "mlcore/_kernels.pxd", "mlcore/_kernels.pyx",
                 *(str(h.relative_to(REPO)) for h in (REPO / "mlcore").glob("*.h"))]:
        assert (site / data).is_file(), data
    shipped = sorted(p.name for p in (site / "letters" / "data").glob("*.txt"))
    assert shipped == sorted(p.name for p in (REPO / "letters" / "data").glob("*.txt"))
    assert list((site / "mlcore").glob("_kernels*.so")), "the compiled kernels"


def start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as stderr:
        return subprocess.Popen(argv, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                                stderr=stderr, text=True)


def ready_address(popen: subprocess.Popen, log: Path) -> str:
    """HOST:PORT from the server's `listening on HOST:PORT` line."""
    assert popen.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([popen.stdout], [], [], 0.2)
        if readable:
            line = popen.stdout.readline()
            if line.startswith("listening on "):
                return line.removeprefix("listening on ").strip()
            if line == "":
                break
    popen.wait(timeout=5)
    raise AssertionError(f"{popen.args} never said it listens:\n{log.read_text()[-2000:]}")


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for popen in started:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
    for popen in started:
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(timeout=5)


def test_installed_servers_train_a_round_on_the_shipped_letters_from_elsewhere(
    installed: Installed, servers: list[subprocess.Popen], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [installed.bin("python"), "-c", "import letters, mlcore._kernels as k; "
         "print(letters.default_data_dir()); print(k.__file__)"],
        cwd=elsewhere, env=clean_env(), capture_output=True, text=True, check=True,
    ).stdout.split()
    data_dir, kernels = (Path(p) for p in where)
    assert data_dir.is_relative_to(installed.site_packages), "letters imported from the wheel"
    assert kernels.is_relative_to(installed.site_packages), "kernels imported from the wheel"

    nodes = []
    for i in range(2):
        log = tmp_path / f"node-{i}.log"
        servers.append(start([installed.bin("fedcluster-node"), "0", "0", "--host", "127.0.0.1"],
                             elsewhere, log))
        nodes.append(ready_address(servers[-1], log))
    (elsewhere / "nodes.txt").write_text("".join(n.replace(":", ",") + "\n" for n in nodes))
    log = tmp_path / "coordinator.log"
    servers.append(start([installed.bin("fedcluster-coordinator"), "0", "round-robin",
                          "--host", "127.0.0.1", "--nodes", "nodes.txt"], elsewhere, log))
    host, port = ready_address(servers[-1], log).rsplit(":", 1)

    # DATA_DIR `letters`: the built-in dataset, found in the installed package.
    client = subprocess.run(
        [installed.bin("fedcluster-client"), host, port, "letters", "1", "1", "8", "0.01"],
        cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=120,
    )

    assert client.returncode == 0, client.stdout + client.stderr
    assert "round 1/1" in client.stdout and "final validation error" in client.stdout, (
        client.stdout + client.stderr)
    assert str(data_dir) in client.stdout + client.stderr, "says which data it trains on"


def test_the_image_copies_every_package_the_wheel_ships() -> None:
    """deploy/Containerfile builds the wheel from copied folders: a package left out of its
    COPY lines fails the image build (as the gateway once did), so each is named here."""
    containerfile = (REPO / "deploy" / "Containerfile").read_text()
    top_level = {name.split(".")[0] for name in source_packages(REPO)}

    ignore = (REPO / "deploy" / "Containerfile.dockerignore").read_text().splitlines()

    missing = [p for p in sorted(top_level) if f"COPY {p} /src/{p}\n" not in containerfile]
    assert not missing, f"deploy/Containerfile does not COPY {missing}"
    hidden = [p for p in sorted(top_level) if f"!{p}" not in ignore]
    assert not hidden, f"deploy/Containerfile.dockerignore leaves {hidden} out of the context"
