"""The gateway's pure parts, without a server: registry, fairness, accounts, names, limits."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.accounts import Accounts, hash_password, verify_password
from gateway.api import validation_message
from gateway.datasets import BadDatasetName, Catalogue, UnknownDataset
from gateway.limits import BodyLimit, RateLimiter
from gateway.scheduler import pick_next
from gateway.store import SCHEMA_VERSION, Job, Registry, RoundRecord, StoreError
from gateway.views import time_to_target

SETTINGS = {"rounds": 3, "epochs": 1, "h": 8, "eta": 0.01}


@pytest.fixture()
def registry(tmp_path: Path):
    reg = Registry(tmp_path / "gateway.db")
    yield reg
    reg.close()


def job(id: int, user: str, state: str = "queued") -> Job:
    return Job(id=id, user=user, dataset="letters", settings={}, state=state, submitted_at=0.0)


# -- fairness ---------------------------------------------------------------------------------

def test_a_free_slot_goes_to_the_user_with_fewest_running() -> None:
    queued = [job(2, "ann"), job(3, "ann"), job(4, "bob")]
    running = [job(1, "ann", "running")]

    assert pick_next(queued, running, {"ann": 10.0}).id == 4


def test_on_a_tie_the_user_served_longest_ago_goes_first() -> None:
    queued = [job(3, "ann"), job(4, "bob")]

    assert pick_next(queued, [], {"ann": 20.0, "bob": 10.0}).id == 4
    assert pick_next(queued, [], {"ann": 10.0, "bob": 20.0}).id == 3
    assert pick_next(queued, [], {"ann": 10.0}).id == 4  # bob never ran a job


def test_fifty_jobs_of_one_user_take_turns_with_another_users_one() -> None:
    queued = [job(i, "ann") for i in range(1, 51)] + [job(51, "bob")]
    last: dict[str, float] = {}
    order = []
    for clock in range(3):
        chosen = pick_next(queued, [], last)
        order.append(chosen.id)
        queued.remove(chosen)
        last[chosen.user] = float(clock)

    assert order == [1, 51, 2]
    assert pick_next([], [], {}) is None


# -- registry ---------------------------------------------------------------------------------

def test_jobs_move_through_their_states_and_keep_their_rounds(registry: Registry) -> None:
    first = registry.add_job("ann", "letters", SETTINGS, max_queued=5)
    assert first is not None and first.state == "queued"
    assert registry.start(first.id)
    registry.add_round(first.id, RoundRecord(1, 0.5, 2.0, 0.1, 0, 0))
    registry.add_round(first.id, RoundRecord(1, 0.4, 1.9, 0.2, 1, 0))  # a redone round
    registry.add_round(first.id, RoundRecord(2, 0.3, 1.5, 0.1, 0, 2))
    registry.finish(first.id, "done", final_validation_error=0.3, model_digest="ab")

    got = registry.job(first.id)
    assert got is not None and got.state == "done" and got.starts == 1
    assert [(r.round, r.validation_error) for r in got.rounds] == [(1, 0.4), (2, 0.3)]
    assert got.settings == SETTINGS
    registry.finish(first.id, "failed")  # a finished job stays finished
    assert registry.job(first.id).state == "done"


def test_queued_jobs_per_user_are_limited(registry: Registry) -> None:
    assert registry.add_job("ann", "letters", SETTINGS, max_queued=2) is not None
    assert registry.add_job("ann", "letters", SETTINGS, max_queued=2) is not None
    assert registry.add_job("ann", "letters", SETTINGS, max_queued=2) is None
    assert registry.add_job("bob", "letters", SETTINGS, max_queued=2) is not None


def test_cancel_ends_a_queued_job_and_flags_a_running_one(registry: Registry) -> None:
    queued = registry.add_job("ann", "letters", SETTINGS, 5)
    running = registry.add_job("ann", "letters", SETTINGS, 5)
    registry.start(running.id)

    assert registry.cancel(queued.id) == "cancelled"
    assert registry.cancel(running.id) == "running"
    assert registry.cancel_requested(running.id)
    assert not registry.start(queued.id)  # a cancelled job never starts
    assert registry.cancel(999) is None


def test_the_leaderboard_ranks_by_error_then_time(registry: Registry) -> None:
    for user, error, seconds in (("ann", 0.2, 5.0), ("bob", 0.1, 9.0), ("cy", 0.2, 1.0)):
        j = registry.add_job(user, "letters", SETTINGS, 5)
        registry.start(j.id)
        registry.add_round(j.id, RoundRecord(1, error, 1.0, seconds, 0, 0))
        registry.finish(j.id, "done", final_validation_error=error)
    other = registry.add_job("dee", "digits", SETTINGS, 5)
    registry.start(other.id)
    registry.finish(other.id, "done", final_validation_error=0.0)

    assert [j.user for j in registry.leaderboard("letters")] == ["bob", "cy", "ann"]


def test_time_to_target_counts_training_seconds_until_the_error_is_reached() -> None:
    rounds = [RoundRecord(1, 0.5, 0, 2.0, 0, 0), RoundRecord(2, 0.25, 0, 3.0, 0, 0)]
    finished = Job(1, "ann", "letters", {}, "done", 0.0, rounds=rounds)

    assert time_to_target(finished, 0.3) == 5.0
    assert time_to_target(finished, 0.5) == 2.0
    assert time_to_target(finished, 0.1) is None


def test_the_registry_survives_reopening_and_refuses_a_second_gateway(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    reg = Registry(path)
    j = reg.add_job("ann", "letters", SETTINGS, 5)
    with pytest.raises(StoreError, match="in use by another gateway"):
        Registry(path)
    reg.close()

    again = Registry(path)
    assert again.job(j.id).state == "queued"
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_a_registry_from_a_newer_gateway_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError, match="newer than this gateway"):
        Registry(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.write_bytes(b"not sqlite at all" * 100)

    with pytest.raises(StoreError, match="not a registry"):
        Registry(path)


# -- accounts ---------------------------------------------------------------------------------

def test_passwords_are_salted_scrypt_hashes() -> None:
    one, two = hash_password("correct horse"), hash_password("correct horse")

    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", one)
    assert not verify_password("correct horsf", one)
    assert not verify_password("x", "md5$whatever")
    assert not verify_password("x", "garbage")


def test_tokens_are_stored_hashed_and_expire(registry: Registry) -> None:
    accounts = Accounts(registry, token_ttl_s=0.2)
    assert accounts.register("ann", "password1")
    assert not accounts.register("ann", "password2")
    assert not accounts.register("Admin", "password3")  # the operator's name

    token, _ = accounts.log_in("ann", "password1")
    assert accounts.principal(token).username == "ann"
    stored = registry._db.execute("SELECT digest FROM tokens").fetchall()
    assert token not in json.dumps([tuple(r) for r in stored])
    assert accounts.log_in("ann", "wrong-pass") is None
    assert accounts.log_in("nobody", "password1") is None
    time.sleep(0.25)  # the token's lifetime passing is what is tested
    assert accounts.principal(token) is None


def test_the_admin_token_is_the_operator(registry: Registry) -> None:
    accounts = Accounts(registry, 60.0, admin_token="a" * 32)

    assert accounts.principal("a" * 32).admin
    assert accounts.principal("a" * 31) is None
    assert accounts.principal("") is None


# -- dataset names ----------------------------------------------------------------------------

def test_dataset_names_never_leave_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "train_1.txt").write_text("1,2,0\n")
    outside.mkdir()
    (outside / "train_1.txt").write_text("1,2,0\n")
    (root / "escape").symlink_to(outside)
    catalogue = Catalogue(root)

    assert catalogue.path("mine") == (root / "mine").resolve()
    for name in ("../outside", "a/b", "/etc", "..", ".", "", "x" * 65, "mine\x00"):
        with pytest.raises(BadDatasetName):
            catalogue.path(name)
    with pytest.raises(BadDatasetName, match="outside the data root"):
        catalogue.path("escape")
    with pytest.raises(UnknownDataset):
        catalogue.path("absent")
    assert catalogue.path("letters").is_dir()  # the built-in dataset


def test_unreadable_datasets_are_left_out_of_the_list(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train_1.txt").write_text("not,numbers\n")

    names = [d.name for d in Catalogue(tmp_path).list()]
    assert names == ["letters"]


# -- limits -----------------------------------------------------------------------------------

def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst=3)

    assert [limiter.wait_s("t", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("t", now=0.0) == pytest.approx(0.5)
    assert limiter.wait_s("t", now=0.5) == 0.0
    assert limiter.wait_s("other", now=0.5) == 0.0  # per caller


def test_the_rate_limiter_forgets_callers_beyond_its_bound() -> None:
    limiter = RateLimiter(1.0, 1, max_keys=10)
    for i in range(1000):
        limiter.wait_s(f"caller-{i}", now=0.0)

    assert len(limiter._buckets) == 10


def call_body_limit(chunks: list[bytes], headers: list, max_bytes: int = 10,
                    timeout_s: float = 1.0, stall: bool = False) -> tuple[int, bytes]:
    """Run BodyLimit around an app that echoes the body; (status, body) sent."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async def main():
        queue = [{"type": "http.request", "body": c, "more_body": stall or i < len(chunks) - 1}
                 for i, c in enumerate(chunks)]

        async def receive():
            if stall and not queue:
                await asyncio.sleep(10)
            return queue.pop(0)

        async def send(message):
            sent.append(message)

        await BodyLimit(app, max_bytes, timeout_s)({"type": "http", "headers": headers},
                                                   receive, send)

    asyncio.run(main())
    return sent[0]["status"], sent[1]["body"]


def test_bodies_are_bounded_by_size_and_time() -> None:
    assert call_body_limit([b"12345", b"678"], []) == (200, b"12345678")
    status, body = call_body_limit([b"x" * 6, b"x" * 6], [])
    assert status == 413 and "larger than 10 bytes" in json.loads(body)["detail"]
    assert call_body_limit([b""], [(b"content-length", b"99")])[0] == 413
    assert call_body_limit([b""], [(b"content-length", b"-1")])[0] == 413
    assert call_body_limit([b"12", b"3"], [], timeout_s=0.2, stall=True)[0] == 408


def test_validation_errors_read_as_one_line() -> None:
    errors = [{"loc": ("body", "rounds"), "type": "greater_than_equal",
               "msg": "Input should be greater than or equal to 1"},
              {"loc": ("body", "colour"), "type": "extra_forbidden", "msg": "x"}]

    assert validation_message(errors) == ("rounds: Input should be greater than or equal to 1; "
                                          "colour: not a field this call takes")
    assert validation_message([{"loc": ("body", 5), "type": "json_invalid", "msg": "x"}]) == \
        "the body is not valid JSON"


def test_a_registry_of_schema_1_is_migrated_keeping_its_jobs(tmp_path: Path) -> None:
    from gateway.store import MIGRATIONS, _statements

    path = tmp_path / "gateway.db"
    db = sqlite3.connect(path)
    for statement in _statements(MIGRATIONS[0]):
        db.execute(statement)
    db.execute("INSERT INTO jobs (username, dataset, settings, state, submitted_at) "
               "VALUES ('ann', 'letters', '{}', 'queued', 0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()

    reg = Registry(path)
    try:
        assert reg._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert reg.job(1).user == "ann"
        reg.add_event("node_dead", "node a:1 is dead", "no heartbeat")
        assert [(e.kind, e.cause) for e in reg.events()] == [("node_dead", "no heartbeat")]
    finally:
        reg.close()


def test_node_changes_name_deaths_returns_and_newcomers() -> None:
    from gateway.watch import node_changes

    before = {"a:1": True, "b:2": True, "c:3": False, "gone:4": True}
    now = {"a:1": True, "b:2": False, "c:3": True, "new:5": True}

    assert sorted((kind, node) for kind, node, _ in node_changes(before, now)) == [
        ("node_back", "c:3"), ("node_dead", "b:2"), ("node_joined", "new:5"),
        ("node_removed", "gone:4")]
