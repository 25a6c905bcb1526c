"""The gateway end to end: real processes (gateway, coordinator, compute nodes) and a real
HTTP client.

Accounts and tokens; a fair queue (`--max-running 1`: A1, A2 from one user, B1 from
another start A1, B1, A2); cancelling a queued job (at once) and a running one (at its
next round boundary); curves, the leaderboard, a job's model (bitwise the weights of the
same settings run by `python -m client` by hand) and predictions through the cluster (the
labels the downloaded model gives locally); every refusal (tokens, bodies, dataset names,
limits, rate, closed registration) with its status and a JSON {"detail": "..."} body, never
a traceback; and a gateway SIGKILLed mid-job, then stopped with SIGTERM, that loses no job
and resumes its running job from the checkpoint to the same bits.

Nodes are loaded on every task (load probability 1, a short --load-delay-s), which slows
rounds to a few tenths of a second without touching the maths, so a job is still running
when a test acts on it; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import wait_for

from gateway.jobs import FEDERATED
from harness import REPO, LocalCluster, ServerProcess, start_gateway
from mlcore.data import read_data_file
from mlcore.servable import load_servable

pytestmark = pytest.mark.slow

POLL_S = 0.02
WAIT_S = 120.0
LOAD_DELAY_S = "0.03"  # per task on each node: 16 shards on 2 nodes, about 0.25 s a round
PASSWORD = "correct horse"
LETTERS = [chr(ord("A") + i) for i in range(26)]
TOKEN_DETAIL = ("missing, unknown or expired token: log in with POST /v1/tokens and send "
                "'Authorization: Bearer TOKEN'")
FINAL = ("done", "failed", "cancelled")


def job(rounds: int, seed: int = 1, h: int = 8, eta: float = 1e-3, **more: Any) -> dict:
    """A job request: small h, one epoch, a few rounds of the built-in letters."""
    return {"dataset": "letters", "rounds": rounds, "epochs": 1, "h": h, "eta": eta,
            "seed": seed, **more}


# ------------------------------------------------------------------ helpers


def check_answer(response: httpx.Response) -> None:
    """Every answer: never a traceback, never a 500; an error is exactly {"detail": str}."""
    response.read()
    where = f"{response.request.method} {response.request.url.path}"
    assert b"Traceback" not in response.content, f"{where}: {response.text[:2000]}"
    assert response.status_code != 500, f"{where}: {response.text}"
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), where
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"detail"}, f"{where}: {body}"
        assert isinstance(body["detail"], str) and body["detail"].strip(), f"{where}: {body}"
        assert "Traceback" not in body["detail"]


class Api:
    """An HTTP client for one gateway; every answer goes through check_answer."""

    def __init__(self, gateway: ServerProcess) -> None:
        self.gateway = gateway
        self.http = httpx.Client(base_url=f"http://{gateway.address}", timeout=30.0,
                                 event_hooks={"response": [check_answer]})

    def call(self, method: str, path: str, token: str | None = None,
             **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=headers, **kwargs)

    def account(self, username: str, admin: str | None = None) -> str:
        """Register `username` (with the admin token under closed registration); its token."""
        got = self.call("POST", "/v1/users", admin,
                        json={"username": username, "password": PASSWORD})
        assert got.status_code == 201, got.text
        assert got.json() == {"username": username}
        return self.log_in(username)

    def log_in(self, username: str) -> str:
        got = self.call("POST", "/v1/tokens", json={"username": username, "password": PASSWORD})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["token_type"] == "bearer" and body["expires_at"].endswith("Z")
        return body["token"]

    def submit(self, token: str, request: dict) -> int:
        got = self.call("POST", "/v1/jobs", token, json=request)
        assert got.status_code == 201, got.text
        assert got.json()["state"] == "queued"
        return got.json()["id"]

    def job(self, token: str, job_id: int) -> dict:
        got = self.call("GET", f"/v1/jobs/{job_id}", token)
        assert got.status_code == 200, got.text
        return got.json()

    def wait_job(self, token: str, job_id: int, condition: Callable[[dict], bool],
                 what: str) -> dict:
        def met() -> dict | None:
            view = self.job(token, job_id)
            if view["state"] in FINAL and not condition(view):
                raise AssertionError(f"job {job_id} ended {view['state']} before {what}: "
                                     f"{view}")
            return view if condition(view) else None

        return wait_for(met, f"job {job_id}: {what}", WAIT_S, interval_s=POLL_S)

    def wait_done(self, token: str, job_id: int) -> dict:
        view = self.wait_job(token, job_id, lambda v: v["state"] in FINAL, "its end")
        assert view["state"] == "done", view
        return view

    def model(self, token: str, job_id: int) -> bytes:
        got = self.call("GET", f"/v1/jobs/{job_id}/model", token)
        assert got.status_code == 200, got.text
        return got.content

    def leaderboard(self, token: str, **params: Any) -> list[dict]:
        got = self.call("GET", "/v1/leaderboard", token, params={"dataset": "letters", **params})
        assert got.status_code == 200, got.text
        return got.json()

    def close(self) -> None:
        self.http.close()


def assert_refused(response: httpx.Response, status: int, *words: str) -> str:
    """The status, and a detail naming each of `words` (check_answer checked the shape)."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    return detail


def client_argv(coordinator: ServerProcess, request: dict, model_out: Path) -> list[str]:
    """`python -m client` with the job's settings (the client's defaults for the rest)."""
    argv = [sys.executable, "-m", "client", coordinator.address.host,
            str(coordinator.address.port), request["dataset"], str(request["rounds"]),
            str(request["epochs"]), str(request["h"]), repr(request["eta"]),
            "--seed", str(request.get("seed", 1)), "--model-out", str(model_out),
            "--timing", str(model_out.with_suffix(".timing.txt"))]
    if request.get("standardize"):
        argv.append("--standardize")
    for key in ("batch_size", "momentum", "init", *FEDERATED):
        if key in request:
            argv += ["--" + key.replace("_", "-"), str(request[key])]
    return argv


@dataclass
class ByHand:
    """A run of `python -m client` going on beside the gateway's job of the same settings."""

    popen: subprocess.Popen
    model: Path

    def wait(self) -> Path:
        try:
            _, err = self.popen.communicate(timeout=WAIT_S)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()
        assert self.popen.returncode == 0, err
        return self.model


def run_by_hand(coordinator: ServerProcess, request: dict, model_out: Path) -> ByHand:
    popen = subprocess.Popen(client_argv(coordinator, request, model_out), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return ByHand(popen, model_out)


def assert_same_model(served: bytes, by_hand: Path) -> None:
    """Every array equal bit for bit; the metadata equal but for the run's random job id."""
    with np.load(io.BytesIO(served)) as got, np.load(by_hand) as want:
        assert sorted(got.files) == sorted(want.files)
        assert {"w1", "b1", "w2", "b2", "meta"} <= set(got.files)
        for name in got.files:
            if name != "meta":
                assert got[name].dtype == want[name].dtype, name
                assert np.array_equal(got[name], want[name]), f"{name} differs"
        meta_got, meta_want = json.loads(str(got["meta"])), json.loads(str(want["meta"]))
    assert meta_got.pop("job") != meta_want.pop("job")
    assert meta_got == meta_want


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two nodes loaded on every task (slow rounds, same maths) and a coordinator."""
    with LocalCluster(tmp_path_factory.mktemp("gateway-cluster")) as local:
        for _ in range(2):
            local.add_node(1.0, "--load-delay-s", LOAD_DELAY_S)
        local.add_coordinator("round-robin")
        yield local


class Gateways:
    """Starts gateways on the cluster; stops every one it started, by PID."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.started: list[ServerProcess] = []
        self.apis: list[Api] = []

    def start(self, workdir: Path, *options: str, data_root: Path | None = None) -> Api:
        gateway = start_gateway(workdir, [self.cluster.coordinator.address], *options,
                                data_root=data_root)
        self.started.append(gateway)
        api = Api(gateway)
        self.apis.append(api)
        return api

    def stop(self) -> None:
        for api in self.apis:
            api.close()
        for gateway in self.started:
            gateway.terminate()
        for gateway in self.started:
            gateway.stop()


@pytest.fixture(scope="module")
def gateways(cluster: LocalCluster) -> Iterator[Gateways]:
    pool = Gateways(cluster)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def fair(gateways: Gateways, tmp_path_factory: pytest.TempPathFactory) -> Api:
    """One job at a time, rates high enough for polling, at most 50 rows per prediction."""
    return gateways.start(tmp_path_factory.mktemp("gw-fair"), "--max-running", "1",
                          "--rate-per-s", "1000", "--login-rate-per-s", "1000",
                          "--max-predict-rows", "50")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of two letters shards, a broken one, and a link leading out of the root."""
    import letters

    source = letters.default_data_dir()
    root = tmp_path_factory.mktemp("data-root")
    mini = root / "mini"
    mini.mkdir()
    for name in ("train_letters1.txt", "train_letters2.txt", "validate_letters.txt"):
        (mini / name).write_bytes((source / name).read_bytes())
    (root / "broken").mkdir()
    (root / "broken" / "train_1.txt").write_text("this is not a shard\n")
    outside = tmp_path_factory.mktemp("outside-the-root")
    (outside / "train_1.txt").write_bytes((source / "train_letters1.txt").read_bytes())
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def strict(gateways: Gateways, data_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Api:
    """Limits low enough to reach in a test; the rate limit stays out of the way."""
    return gateways.start(
        tmp_path_factory.mktemp("gw-strict"), "--max-running", "1", "--max-rounds", "50",
        "--max-epochs", "3", "--max-hidden", "64", "--max-queued-per-user", "2",
        "--max-body-kb", "1", "--rate-per-s", "1000", "--login-rate-per-s", "1000",
        data_root=data_root,
    )


@pytest.fixture(scope="module")
def strict_token(strict: Api) -> str:
    return strict.account("strictly")


@dataclass
class Closed:
    api: Api
    admin: str


@pytest.fixture(scope="module")
def closed(gateways: Gateways, tmp_path_factory: pytest.TempPathFactory) -> Closed:
    """Closed registration, tokens that live 1.8 s, one request per 5 s per token."""
    workdir = tmp_path_factory.mktemp("gw-closed")
    admin = "operator-secret-" + "x" * 16
    (workdir / "admin.token").write_text(admin + "\n")
    api = gateways.start(workdir, "--closed-registration", "--admin-token-file",
                         str(workdir / "admin.token"), "--token-ttl-h", "0.0005",
                         "--rate-per-s", "0.2", "--login-rate-per-s", "1000")
    return Closed(api, admin)


# ------------------------------------------------------------------ a fair queue, curves, models


@dataclass
class FairRun:
    """Three jobs from two users under --max-running 1, watched from submission to end."""

    api: Api
    alice: str
    bob: str
    ids: dict[str, int]
    requests: dict[str, dict]
    left_queue: list[int]  # job ids in the order they were first seen out of `queued`
    seen_rounds: dict[int, list[int]] = field(default_factory=dict)  # len(rounds) per poll
    views: dict[int, dict] = field(default_factory=dict)
    by_hand: Path | None = None  # the model of A1's settings run by `python -m client`

    def token(self, name: str) -> str:
        return self.alice if name.startswith("A") else self.bob


@pytest.fixture(scope="module")
def fair_run(fair: Api, cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> FairRun:
    alice, bob = fair.account("alice"), fair.account("bob")
    requests = {"A1": job(4, seed=1), "A2": job(3, seed=2, h=12, eta=3e-4),
                "B1": job(3, seed=3, eta=1e-4)}
    reference = run_by_hand(cluster.coordinator, requests["A1"],
                            tmp_path_factory.mktemp("by-hand") / "A1.npz")
    try:
        ids = {name: fair.submit(alice if name.startswith("A") else bob, requests[name])
               for name in ("A1", "A2", "B1")}
        run = FairRun(fair, alice, bob, ids, requests, [])

        def all_ended() -> bool:
            for name, job_id in ids.items():
                view = fair.job(run.token(name), job_id)
                run.views[job_id] = view
                if view["state"] != "queued" and job_id not in run.left_queue:
                    run.left_queue.append(job_id)
                if view["state"] == "running":
                    run.seen_rounds.setdefault(job_id, []).append(len(view["rounds"]))
            return all(v["state"] in FINAL for v in run.views.values())

        wait_for(all_ended, "three jobs to end", WAIT_S, interval_s=POLL_S)
    finally:
        by_hand = reference.wait()
    run.by_hand = by_hand
    return run


def test_jobs_start_in_fair_order(fair_run: FairRun) -> None:
    ids, views = fair_run.ids, fair_run.views
    assert fair_run.left_queue == [ids["A1"], ids["B1"], ids["A2"]]
    for name, job_id in ids.items():
        view = views[job_id]
        assert view["state"] == "done", view
        assert view["user"] == ("alice" if name.startswith("A") else "bob")
        assert view["error"] is None and view["cancel_requested"] is False
        assert view["timing"]["starts"] == 1
        assert {k: view["settings"][k] for k in fair_run.requests[name] if k != "dataset"} \
            == {k: v for k, v in fair_run.requests[name].items() if k != "dataset"}
    # started_at has one-second resolution: the order may only tie, never invert.
    starts = [views[ids[n]]["started_at"] for n in ("A1", "B1", "A2")]
    assert starts == sorted(starts)
    for earlier, later in (("A1", "B1"), ("B1", "A2")):
        assert views[ids[earlier]]["finished_at"] <= views[ids[later]]["started_at"]
    # Each user sees only their own jobs, newest first.
    listed = fair_run.api.call("GET", "/v1/jobs", fair_run.alice).json()
    assert [j["id"] for j in listed] == [ids["A2"], ids["A1"]]
    done = fair_run.api.call("GET", "/v1/jobs", fair_run.bob, params={"state": "done"}).json()
    assert [j["id"] for j in done] == [ids["B1"]]


def test_curves_grow_round_by_round(fair_run: FairRun) -> None:
    for name, job_id in fair_run.ids.items():
        view = fair_run.views[job_id]
        rounds = view["rounds"]
        asked = fair_run.requests[name]["rounds"]
        assert [r["round"] for r in rounds] == list(range(1, asked + 1))
        for r in rounds:
            assert set(r) >= {"round", "validation_error", "train_loss", "round_s"}
            assert 0.0 <= r["validation_error"] <= 1.0
            assert isinstance(r["train_loss"], float) and r["train_loss"] >= 0
            assert r["round_s"] > 0
        assert view["final_validation_error"] == rounds[-1]["validation_error"]
        assert view["timing"]["rounds_done"] == asked
        assert view["timing"]["train_s"] == pytest.approx(sum(r["round_s"] for r in rounds))
        seen = fair_run.seen_rounds.get(job_id, [])
        assert seen == sorted(seen), seen  # the curve only grows
    # A1 was watched part-way: its curve had some rounds and not yet all of them.
    partway = [n for n in fair_run.seen_rounds[fair_run.ids["A1"]] if 0 < n < 4]
    assert partway, fair_run.seen_rounds
    timing = fair_run.api.call("GET", f"/v1/jobs/{fair_run.ids['A1']}/timing", fair_run.alice)
    assert timing.status_code == 200 and timing.text.strip()


def test_leaderboard_ranks_by_final_validation_error(fair_run: FairRun) -> None:
    api, ids = fair_run.api, fair_run.ids
    board = api.leaderboard(fair_run.bob)
    assert {e["job"] for e in board} >= set(ids.values())
    assert [e["rank"] for e in board] == list(range(1, len(board) + 1))
    errors = [e["validation_error"] for e in board]
    assert errors == sorted(errors)
    for entry in board:
        view = api.call("GET", f"/v1/jobs/{entry['job']}", fair_run.alice if entry["user"]
                        == "alice" else fair_run.bob).json()
        assert view["state"] == "done"
        assert entry["validation_error"] == view["final_validation_error"]
        assert entry["rounds"] == len(view["rounds"]) and entry["dataset"] == "letters"
    # time to target: with target 1 every first round reaches it
    loose = {e["job"]: e for e in api.leaderboard(fair_run.alice, target=1.0)}
    a1 = fair_run.views[ids["A1"]]
    assert loose[ids["A1"]]["time_to_target_s"] == pytest.approx(a1["rounds"][0]["round_s"])
    assert api.leaderboard(fair_run.alice, limit=1) == board[:1]
    assert api.call("GET", "/v1/leaderboard", fair_run.alice,
                    params={"dataset": "nothing-here"}).json() == []


def test_a_jobs_model_is_the_client_run_bit_for_bit(fair_run: FairRun) -> None:
    assert fair_run.by_hand is not None
    assert_same_model(fair_run.api.model(fair_run.alice, fair_run.ids["A1"]), fair_run.by_hand)


def test_predictions_are_the_downloaded_models_labels(fair_run: FairRun) -> None:
    import letters

    api, alice, a1 = fair_run.api, fair_run.alice, fair_run.ids["A1"]
    rows = read_data_file(letters.default_data_dir() / "validate_letters.txt").x[:40]
    servable = load_servable(api.model(alice, a1))
    assert list(servable.class_names) == LETTERS

    got = api.call("POST", f"/v1/jobs/{a1}/predict", alice, json={"rows": rows.tolist()})
    assert got.status_code == 200, got.text
    answer = got.json()
    local = servable.predict(rows)
    assert answer["classes"] == local.tolist()
    assert answer["labels"] == [LETTERS[i] for i in local]

    got = api.call("POST", f"/v1/jobs/{a1}/predict", alice,
                   json={"rows": rows[:5].tolist(), "probabilities": True})
    assert got.status_code == 200, got.text
    assert got.json()["class_names"] == LETTERS
    assert np.array_equal(np.array(got.json()["probabilities"]), servable.predict_proba(rows[:5]))

    # What a prediction may not be: too many rows, the wrong width, not numbers, not yours.
    assert_refused(api.call("POST", f"/v1/jobs/{a1}/predict", alice,
                            json={"rows": np.zeros((51, 16)).tolist()}), 422, "51 rows")
    assert_refused(api.call("POST", f"/v1/jobs/{a1}/predict", alice,
                            json={"rows": [[1.0, 2.0]]}), 422, "rows[0]", "16")
    assert_refused(api.call("POST", f"/v1/jobs/{a1}/predict", alice,
                            content=b'{"rows": [[NaN' + b", 1" * 15 + b"]]}",
                            headers={"content-type": "application/json"}), 422)
    assert_refused(api.call("POST", f"/v1/jobs/{a1}/predict", alice, json={"rows": []}), 422)
    assert_refused(api.call("POST", f"/v1/jobs/{a1}/predict", fair_run.bob,
                            json={"rows": rows[:1].tolist()}), 404)
    assert_refused(api.call("GET", f"/v1/jobs/{a1}/model", fair_run.bob), 404)


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_round_boundary(fair: Api
                                                                            ) -> None:
    carol = fair.account("carol")
    long_job = fair.submit(carol, job(40, seed=7))
    waiting = fair.submit(carol, job(2, seed=8))  # behind long_job: --max-running 1

    assert fair.job(carol, waiting)["state"] == "queued"
    got = fair.call("DELETE", f"/v1/jobs/{waiting}", carol)
    assert got.status_code == 200, got.text
    assert got.json() == {"id": waiting, "state": "cancelled", "cancel_requested": True}
    view = fair.job(carol, waiting)
    assert view["state"] == "cancelled" and view["rounds"] == []
    assert view["started_at"] is None and view["finished_at"] is not None
    assert_refused(fair.call("DELETE", f"/v1/jobs/{waiting}", carol), 409, "cancelled")

    fair.wait_job(carol, long_job, lambda v: v["state"] == "running" and v["rounds"],
                  "a round of the long job")
    got = fair.call("DELETE", f"/v1/jobs/{long_job}", carol)
    assert got.status_code == 200, got.text
    assert got.json() == {"id": long_job, "state": "running", "cancel_requested": True}
    view = fair.wait_job(carol, long_job, lambda v: v["state"] in FINAL, "the cancel")
    assert view["state"] == "cancelled", view
    assert 1 <= len(view["rounds"]) < 40 and view["error"] is None
    assert [r["round"] for r in view["rounds"]] == list(range(1, len(view["rounds"]) + 1))
    assert view["final_validation_error"] is None and view["cancel_requested"] is True
    assert fair.job(carol, long_job)["rounds"] == view["rounds"]  # no round after the stop

    assert_refused(fair.call("GET", f"/v1/jobs/{long_job}/model", carol), 409, "cancelled")
    assert_refused(fair.call("POST", f"/v1/jobs/{long_job}/predict", carol,
                             json={"rows": [[0.0] * 16]}), 409, "cancelled")
    assert long_job not in {e["job"] for e in fair.leaderboard(carol)}
    # Nobody else's job, and no job that does not exist.
    dave = fair.account("dave")
    assert_refused(fair.call("GET", f"/v1/jobs/{long_job}", dave), 404)
    assert_refused(fair.call("DELETE", f"/v1/jobs/{long_job}", dave), 404)
    assert_refused(fair.call("GET", "/v1/jobs/999999", carol), 404)
    assert_refused(fair.call("GET", "/v1/jobs/not-a-number", carol), 422)


# ------------------------------------------------------------------ refusals


def test_health_needs_no_token_and_datasets_list_what_may_be_named(strict: Api,
                                                                   strict_token: str) -> None:
    got = strict.call("GET", "/v1/health")
    assert got.status_code == 200 and got.json() == {"status": "ok"}
    # Answers on a kept-alive connection take milliseconds, not the ~40 ms of a response
    # body held back by Nagle's algorithm until the client's delayed ACK of its headers.
    took = []
    for _ in range(21):
        started = time.perf_counter()
        assert strict.call("GET", "/v1/health").status_code == 200
        took.append(time.perf_counter() - started)
    assert sorted(took)[10] < 0.02, took
    names = {d["name"]: d for d in strict.call("GET", "/v1/datasets", strict_token).json()}
    assert names["letters"]["classes"] == 26 and names["letters"]["attributes"] == 16
    assert names["mini"]["shards"] == 2
    assert "broken" not in names and "escape" not in names
    status = strict.call("GET", "/v1/status", strict_token)
    assert status.status_code == 200, status.text
    assert len(status.json()["nodes"]) == 2


def test_a_dataset_under_the_data_root_trains(strict: Api, strict_token: str) -> None:
    job_id = strict.submit(strict_token, job(1, seed=5) | {"dataset": "mini"})
    view = strict.wait_done(strict_token, job_id)
    assert view["dataset"] == "mini" and len(view["rounds"]) == 1
    board = strict.call("GET", "/v1/leaderboard", strict_token, params={"dataset": "mini"})
    assert [e["job"] for e in board.json()] == [job_id]
    assert job_id not in {e["job"] for e in strict.leaderboard(strict_token)}


def test_a_federated_job_is_the_client_run_with_the_same_options_bit_for_bit(
        strict: Api, strict_token: str, cluster: LocalCluster, tmp_path: Path) -> None:
    request = job(3, seed=4, batch_size=64, momentum=0.5, strategy="fedadam", server_lr=0.05,
                  lr_schedule="cosine", fraction=0.5, prox_mu=0.5, dp_clip=5.0,
                  dp_noise_multiplier=0.1)
    by_hand = run_by_hand(cluster.coordinator, request, tmp_path / "by-hand.npz")
    job_id = strict.submit(strict_token, request)
    view = strict.wait_done(strict_token, job_id)

    assert {k: view["settings"][k] for k in request if k != "dataset"} == \
        {k: v for k, v in request.items() if k != "dataset"}
    assert_same_model(strict.model(strict_token, job_id), by_hand.wait())


@pytest.mark.parametrize("settings, words", [
    ({"strategy": "median", "beta2": 0.9}, "beta2 applies to fedadam, fedyogi"),
    ({"lr_schedule": "constant", "lr_gamma": 0.5}, "lr_gamma applies to"),
    ({"strategy": "krum", "dp_clip": 1.0}, "dp_clip needs a mean-based strategy"),
    ({"dp_noise_multiplier": 1.0}, "dp_noise_multiplier needs dp_clip"),
    ({"prox_mu": 2000.0}, "prox_mu x eta is 2"),
    ({"strategy": "fedsgd"}, "strategy"),
    ({"fraction": 0}, "fraction"),
])
def test_federated_settings_that_do_not_fit_are_422(strict: Api, strict_token: str,
                                                    settings: dict, words: str) -> None:
    answer = strict.call("POST", "/v1/jobs", strict_token, json=job(1) | settings)
    assert_refused(answer, 422, words)


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer  garbage", "Bearer garbage", "Bearer " + "x" * 5000,
    "Basic dXNlcjpwYXNz", "bearer\tnope", "Token abc",
])
def test_bad_tokens_are_401(strict: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, kwargs in (
        ("GET", "/v1/jobs", {}), ("POST", "/v1/jobs", {"json": job(1)}),
        ("GET", "/v1/jobs/1", {}), ("DELETE", "/v1/jobs/1", {}),
        ("GET", "/v1/jobs/1/model", {}), ("GET", "/v1/jobs/1/timing", {}),
        ("POST", "/v1/jobs/1/predict", {"json": {"rows": [[1.0]]}}),
        ("GET", "/v1/leaderboard", {"params": {"dataset": "letters"}}),
        ("GET", "/v1/datasets", {}), ("GET", "/v1/status", {}),
    ):
        got = strict.call(method, path, headers=headers, **kwargs)
        assert assert_refused(got, 401) == TOKEN_DETAIL, (method, path)
        assert got.headers["www-authenticate"] == "Bearer"


def test_accounts_refuse_duplicates_and_wrong_passwords_alike(strict: Api) -> None:
    strict.account("erin")
    again = strict.call("POST", "/v1/users", json={"username": "erin", "password": "other pw 1"})
    assert_refused(again, 409, "taken")
    assert_refused(strict.call("POST", "/v1/users",
                               json={"username": "admin", "password": PASSWORD}), 409)
    wrong = strict.call("POST", "/v1/tokens", json={"username": "erin", "password": "nope-nope"})
    unknown = strict.call("POST", "/v1/tokens",
                          json={"username": "nobody-here", "password": PASSWORD})
    assert assert_refused(wrong, 401) == assert_refused(unknown, 401)
    for body in ({"username": "ab", "password": PASSWORD},
                 {"username": "../etc", "password": PASSWORD},
                 {"username": "x" * 33, "password": PASSWORD},
                 {"username": "frank", "password": "short"},
                 {"username": "frank"}, {"username": 5, "password": PASSWORD},
                 {"username": "frank", "password": PASSWORD, "admin": True}):
        assert_refused(strict.call("POST", "/v1/users", json=body), 422)
        assert_refused(strict.call("POST", "/v1/tokens", json=body), 422)


BAD_JOB_BODIES: list[tuple[str, bytes, str]] = [
    ("invalid JSON", b'{"dataset": "letters", "rounds": ', "not valid JSON"),
    ("not an object", b"[1, 2, 3]", "JSON object"),
    ("empty", b"", "JSON body is required"),
    ("rounds a string", json.dumps(job(1) | {"rounds": "3"}).encode(), "rounds"),
    ("rounds a float", json.dumps(job(1) | {"rounds": 2.5}).encode(), "rounds"),
    ("rounds a bool", json.dumps(job(1) | {"rounds": True}).encode(), "rounds"),
    ("rounds zero", json.dumps(job(1) | {"rounds": 0}).encode(), "rounds"),
    ("eta a word", json.dumps(job(1) | {"eta": "fast"}).encode(), "eta"),
    ("eta negative", json.dumps(job(1) | {"eta": -1}).encode(), "eta"),
    ("eta NaN", json.dumps(job(1) | {"eta": float("nan")}).encode(), "eta"),
    ("seed too big", json.dumps(job(1) | {"seed": 2**64}).encode(), "seed"),
    ("standardize a word", json.dumps(job(1) | {"standardize": "yes"}).encode(),
     "standardize"),
    ("init unknown", json.dumps(job(1) | {"init": "zeros"}).encode(), "init"),
    ("dataset a number", json.dumps(job(1) | {"dataset": 7}).encode(), "dataset"),
    ("unknown field", json.dumps(job(1) | {"gpus": 8}).encode(), "gpus: not a field"),
    ("missing field", json.dumps({k: v for k, v in job(1).items() if k != "eta"}).encode(),
     "eta"),
    ("null body", b"null", ""),
]


@pytest.mark.parametrize("body, words", [(b, w) for _, b, w in BAD_JOB_BODIES],
                         ids=[name for name, _, _ in BAD_JOB_BODIES])
def test_bad_bodies_are_422(strict: Api, strict_token: str, body: bytes, words: str) -> None:
    got = strict.call("POST", "/v1/jobs", strict_token, content=body,
                      headers={"content-type": "application/json"})
    assert_refused(got, 422, *([words] if words else []))


def test_bad_queries_are_422(strict: Api, strict_token: str) -> None:
    for path, params in (("/v1/jobs", {"state": "sleeping"}), ("/v1/jobs", {"limit": 0}),
                         ("/v1/jobs", {"limit": "many"}), ("/v1/jobs", {"before": -1}),
                         ("/v1/jobs", {"before": 2**63}),
                         ("/v1/leaderboard", {}),
                         ("/v1/leaderboard", {"dataset": "letters", "target": 2}),
                         ("/v1/leaderboard", {"dataset": "x" * 65})):
        assert_refused(strict.call("GET", path, strict_token, params=params), 422)
    # Job ids beyond what SQLite stores are refused, not a 500 from the query.
    for method in ("GET", "DELETE"):
        assert_refused(strict.call(method, f"/v1/jobs/{2**63}", strict_token), 422, "job_id")
    assert_refused(strict.call("GET", f"/v1/jobs/{2**63 - 1}", strict_token), 404)
    assert_refused(strict.call("GET", "/v1/jobs/0", strict_token), 422, "job_id")
    assert_refused(strict.call("GET", "/v1/leaderboard", strict_token,
                               params={"dataset": "../x"}), 400, "not a dataset name")


@pytest.mark.parametrize("name, status, words", [
    ("../x", 400, "not a dataset name"), ("a/b", 400, "not a dataset name"),
    (".", 400, "not a dataset name"), ("..", 400, "not a dataset name"),
    ("/etc", 400, "not a dataset name"), ("", 422, "dataset"),
    ("x" * 65, 422, "dataset"), ("nosuch", 400, "no dataset 'nosuch'"),
    ("escape", 400, "outside the data root"), ("broken", 400, "cannot be read"),
])
def test_bad_dataset_names(strict: Api, strict_token: str, name: str, status: int,
                           words: str) -> None:
    got = strict.call("POST", "/v1/jobs", strict_token, json=job(1) | {"dataset": name})
    assert_refused(got, status, words)


def test_limits(strict: Api, strict_token: str) -> None:
    for key, value, option in (("rounds", 51, "--max-rounds"), ("epochs", 4, "--max-epochs"),
                               ("h", 65, "--max-hidden")):
        got = strict.call("POST", "/v1/jobs", strict_token, json=job(1) | {key: value})
        assert_refused(got, 422, key, option)
    # Bodies above --max-body-kb 1: declared by Content-Length, or streamed without one.
    big = json.dumps(job(1) | {"padding": "x" * 2000}).encode()
    assert_refused(strict.call("POST", "/v1/jobs", strict_token, content=big,
                               headers={"content-type": "application/json"}), 413, "1024")
    assert_refused(strict.call("POST", "/v1/jobs", strict_token, content=iter([big[:600],
                                                                              big[600:]]),
                               headers={"content-type": "application/json"}), 413, "1024")
    # --max-queued-per-user 2: a running job does not count, a third queued one does.
    grace = strict.account("grace")
    blocker = strict.submit(grace, job(50, seed=9))
    queued: list[int] = []
    try:
        strict.wait_job(grace, blocker, lambda v: v["state"] == "running", "the blocker to run")
        queued += [strict.submit(grace, job(2, seed=s)) for s in (10, 11)]
        assert_refused(strict.call("POST", "/v1/jobs", grace, json=job(2)), 429, "2 jobs queued")
        # others are not held back by grace's queue
        other = strict.submit(strict_token, job(2, seed=12))
        queued.append(other)
        assert strict.call("DELETE", f"/v1/jobs/{queued[0]}", grace).json()["state"] \
            == "cancelled"
        queued.append(strict.submit(grace, job(2, seed=13)))  # room again
    finally:
        for job_id in queued:
            for token in (grace, strict_token):
                strict.call("DELETE", f"/v1/jobs/{job_id}", token)
        strict.call("DELETE", f"/v1/jobs/{blocker}", grace)
        strict.wait_job(grace, blocker, lambda v: v["state"] in FINAL, "the blocker's end")
    assert all(strict.job(t, i)["state"] == "cancelled"
               for i, t in zip(queued, (grace, grace, strict_token, grace), strict=True))


def test_rate_limit_closed_registration_and_token_expiry(closed: Closed) -> None:
    api = closed.api
    body = {"username": "heidi", "password": PASSWORD}
    assert_refused(api.call("POST", "/v1/users", json=body), 403, "closed")
    assert_refused(api.call("POST", "/v1/users", "not-the-admin-token", json=body), 403)
    token = api.account("heidi", admin=closed.admin)
    assert_refused(api.call("POST", "/v1/users", token,
                            json={"username": "ivan", "password": PASSWORD}), 403)

    # --rate-per-s 0.2: a burst of one request, then 429 with how long to wait.
    assert api.call("GET", "/v1/jobs", token).status_code == 200
    limited = api.call("GET", "/v1/jobs", token)
    assert_refused(limited, 429, "too many requests")
    assert int(limited.headers["retry-after"]) >= 1

    # --token-ttl-h 0.0005 (1.8 s): the same token is then refused like a missing one.
    expired = wait_for(lambda: (r := api.call("GET", "/v1/jobs", token)).status_code == 401
                       and r, "the token to expire", timeout_s=30)
    assert expired.json()["detail"] == TOKEN_DETAIL
    fresh = api.log_in("heidi")
    assert api.call("GET", "/v1/jobs", fresh).status_code == 200


# ------------------------------------------------------------------ restarts


def test_sigkill_and_sigterm_restarts_lose_no_job_and_resume_to_the_same_bits(
    gateways: Gateways, cluster: LocalCluster, tmp_path: Path
) -> None:
    workdir = tmp_path / "gateway"  # one --db for all three gateway processes
    options = ("--max-running", "1", "--rate-per-s", "1000", "--login-rate-per-s", "1000")
    api = gateways.start(workdir, *options)
    kim, lee = api.account("kim"), api.account("lee")
    requests = {"F": job(2, seed=21), "L": job(10, seed=22, eta=3e-4),
                "Q": job(6, seed=23, h=12), "Q2": job(2, seed=24)}
    references = {name: run_by_hand(cluster.coordinator, requests[name],
                                    tmp_path / f"{name}-by-hand.npz") for name in ("L", "Q")}
    try:
        finished = api.submit(kim, requests["F"])
        f_view = api.wait_done(kim, finished)
        running = api.submit(kim, requests["L"])
        queued = api.submit(lee, requests["Q"])
        before = api.wait_job(kim, running, lambda v: len(v["rounds"]) >= 2, "two rounds of L")
        assert before["state"] == "running" and len(before["rounds"]) < 10
        api.gateway.kill()  # SIGKILL in the middle of the job

        api = gateways.start(workdir, *options)  # same --db, same jobs dir
        assert api.job(kim, finished) == f_view  # tokens, accounts and finished jobs kept
        assert api.job(lee, queued)["state"] == "queued"
        resumed = api.job(kim, running)
        assert resumed["state"] == "running" and resumed["timing"]["starts"] == 2
        assert resumed["rounds"][:len(before["rounds"])] == before["rounds"]
        assert [e["job"] for e in api.leaderboard(kim)] == [finished]

        l_view = api.wait_done(kim, running)
        assert l_view["timing"]["starts"] == 2
        assert [r["round"] for r in l_view["rounds"]] == list(range(1, 11))
        assert l_view["started_at"] == before["started_at"]
        assert_same_model(api.model(kim, running), references["L"].wait())
        # taken up from the checkpoint (written after each recorded round), not from round 1
        held = re.search(r"it holds round (\d+)", api.gateway.log())
        assert held and int(held.group(1)) >= len(before["rounds"]) - 1 >= 1, api.gateway.log()

        # A clean stop (SIGTERM) with one job running and one queued.
        waiting = api.submit(kim, requests["Q2"])
        api.wait_job(lee, queued, lambda v: v["state"] == "running" and v["rounds"],
                     "a round of Q")
        board = api.leaderboard(kim)
        api.gateway.terminate()
        assert api.gateway.popen.wait(timeout=30) == 0  # a clean stop, not death by signal
        assert "event=gateway_stopped" in api.gateway.log(), api.gateway.log()[-3000:]

        api = gateways.start(workdir, *options)
        assert api.job(kim, waiting)["state"] == "queued"
        assert api.leaderboard(kim) == board
        q_view = api.wait_done(lee, queued)
        assert q_view["timing"]["starts"] == 2
        assert [r["round"] for r in q_view["rounds"]] == list(range(1, 7))
        assert_same_model(api.model(lee, queued), references["Q"].wait())
        assert api.wait_done(kim, waiting)["timing"]["starts"] == 1
        final = api.leaderboard(lee)
        assert {e["job"] for e in final} == {finished, running, queued, waiting}
        assert [e["validation_error"] for e in final] == sorted(e["validation_error"]
                                                                for e in final)
        unranked = [{k: v for k, v in e.items() if k != "rank"} for e in final
                    if e["job"] in (finished, running)]
        assert unranked == [{k: v for k, v in e.items() if k != "rank"} for e in board]
    finally:
        for reference in references.values():
            if reference.popen.poll() is None:
                reference.popen.kill()
                reference.popen.wait()
