"""The run registry: users, tokens, jobs and their rounds in one SQLite file.

The gateway's only durable state. WAL mode with synchronous=FULL: a committed write
survives the process being killed (and the machine losing power). The schema carries its
version in `PRAGMA user_version`; MIGRATIONS take any older file to the current one at
open, and a file from a newer gateway is refused rather than guessed at.

One connection behind a lock: the gateway's writes are a handful per round, far below what
one connection serves, and a lock makes every multi-statement change atomic without
retry loops.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Migration i (0-based) takes a file from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        username      TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created_at    REAL NOT NULL
    );
    CREATE TABLE tokens (
        digest     TEXT PRIMARY KEY,          -- sha256 of the token: the token is never stored
        username   TEXT NOT NULL REFERENCES users(username),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX tokens_by_expiry ON tokens(expires_at);
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        username         TEXT NOT NULL,
        dataset          TEXT NOT NULL,
        settings         TEXT NOT NULL,       -- JSON: what the job trains with
        state            TEXT NOT NULL CHECK (state IN
                             ('queued', 'running', 'done', 'failed', 'cancelled')),
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        submitted_at     REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        starts           INTEGER NOT NULL DEFAULT 0,  -- > 1: resumed after a gateway restart
        error            TEXT,
        final_validation_error REAL,
        model_digest     TEXT
    );
    CREATE INDEX jobs_by_state ON jobs(state, id);
    CREATE INDEX jobs_by_user ON jobs(username, id);
    CREATE INDEX jobs_by_dataset ON jobs(dataset, state);
    CREATE TABLE rounds (
        job_id           INTEGER NOT NULL REFERENCES jobs(id),
        round            INTEGER NOT NULL,
        validation_error REAL NOT NULL,
        train_loss       REAL NOT NULL,
        round_s          REAL NOT NULL,
        retries          INTEGER NOT NULL,
        declined         INTEGER NOT NULL,
        recorded_at      REAL NOT NULL,
        PRIMARY KEY (job_id, round)
    );
    """,
    """
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      REAL NOT NULL,
        kind    TEXT NOT NULL,                -- node_dead, job_done, round_done, ...
        message TEXT NOT NULL,
        cause   TEXT NOT NULL DEFAULT ''
    );
    """,
)
EVENTS_KEPT = 2000  # the newest events; older ones are dropped as new ones come
SCHEMA_VERSION = len(MIGRATIONS)

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"done", "failed", "cancelled"})


class StoreError(RuntimeError):
    """The registry file cannot be used: say which and why (a person's problem to fix)."""


@dataclass(frozen=True)
class RoundRecord:
    round: int
    validation_error: float
    train_loss: float
    round_s: float
    retries: int
    declined: int


@dataclass(frozen=True)
class Job:
    id: int
    user: str
    dataset: str
    settings: dict[str, Any]
    state: str
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    starts: int = 0
    error: str | None = None
    final_validation_error: float | None = None
    model_digest: str | None = None
    cancel_requested: bool = False
    rounds: list[RoundRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """Something a person watching the cluster wants to know happened, and why."""

    id: int
    at: float
    kind: str
    message: str
    cause: str = ""


class Registry:
    """Every read and write the gateway makes; each method is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._lock_file = _claim(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._lock_file.close()
            raise StoreError(f"{path}: not a registry this gateway can use ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this "
                             f"gateway's {SCHEMA_VERSION}: run the newer gateway, or give "
                             "another --db")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                for statement in _statements(MIGRATIONS[target - 1]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # -- users and tokens ------------------------------------------------------------------

    def add_user(self, username: str, password_hash: str) -> bool:
        """False when the name is taken."""
        with self._transaction():
            try:
                self._db.execute("INSERT INTO users VALUES (?, ?, ?)",
                                 (username, password_hash, time.time()))
            except sqlite3.IntegrityError:
                return False
        return True

    def password_hash(self, username: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT password_hash FROM users WHERE username = ?",
                                   (username,)).fetchone()
        return row[0] if row else None

    def add_token(self, digest: str, username: str, expires_at: float) -> None:
        now = time.time()
        with self._transaction():
            self._db.execute("DELETE FROM tokens WHERE expires_at <= ?", (now,))
            self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?)",
                             (digest, username, now, expires_at))

    def token_user(self, digest: str, now: float) -> str | None:
        """Whose token this is, while it has not expired."""
        with self._lock:
            row = self._db.execute(
                "SELECT username FROM tokens WHERE digest = ? AND expires_at > ?", (digest, now)
            ).fetchone()
        return row[0] if row else None

    # -- jobs ------------------------------------------------------------------------------

    def add_job(self, username: str, dataset: str, settings: dict[str, Any],
                max_queued: int) -> Job | None:
        """A new queued job; None when the user already has `max_queued` waiting."""
        with self._transaction():
            waiting = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE username = ? AND state = 'queued'", (username,)
            ).fetchone()[0]
            if waiting >= max_queued:
                return None
            cursor = self._db.execute(
                "INSERT INTO jobs (username, dataset, settings, state, submitted_at) "
                "VALUES (?, ?, ?, 'queued', ?)",
                (username, dataset, json.dumps(settings, sort_keys=True), time.time()),
            )
            job_id = cursor.lastrowid
        job = self.job(int(job_id or 0))
        assert job is not None
        return job

    def job(self, job_id: int, with_rounds: bool = True) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            return self._job(row, self._rounds([job_id]) if with_rounds else {})

    def jobs(self, username: str | None = None, states: tuple[str, ...] = STATES,
             limit: int = 100, before: int | None = None,
             with_rounds: bool = True) -> list[Job]:
        """Newest first; `username` None for everyone's."""
        where = [f"state IN ({','.join('?' * len(states))})"]
        args: list[Any] = list(states)
        if username is not None:
            where.append("username = ?")
            args.append(username)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            rounds = self._rounds([r["id"] for r in rows]) if with_rounds else {}
            return [self._job(r, rounds) for r in rows]

    def queue(self) -> tuple[list[Job], list[Job]]:
        """(queued jobs oldest first, running jobs): what the scheduler chooses from."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
            ).fetchall()
        jobs = [self._job(r, {}) for r in rows]
        return ([j for j in jobs if j.state == "queued"],
                [j for j in jobs if j.state == "running"])

    def last_starts(self) -> dict[str, float]:
        """Each user's latest job start: who was served longest ago goes first on a tie."""
        with self._lock:
            rows = self._db.execute(
                "SELECT username, MAX(started_at) FROM jobs WHERE started_at IS NOT NULL "
                "GROUP BY username"
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def start(self, job_id: int) -> bool:
        """queued -> running (or a running job taken up again after a restart)."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE jobs SET state = 'running', starts = starts + 1, "
                "started_at = COALESCE(started_at, ?) "
                "WHERE id = ? AND state IN ('queued', 'running') AND cancel_requested = 0",
                (time.time(), job_id),
            )
        return cursor.rowcount == 1

    def add_round(self, job_id: int, record: RoundRecord) -> None:
        """Idempotent: a round redone after a restart replaces its first record."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, record.round, record.validation_error, record.train_loss,
                 record.round_s, record.retries, record.declined, time.time()),
            )

    def finish(self, job_id: int, state: str, *, error: str | None = None,
               final_validation_error: float | None = None,
               model_digest: str | None = None) -> None:
        assert state in FINAL_STATES
        with self._transaction():
            self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, "
                "final_validation_error = ?, model_digest = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (state, time.time(), error, final_validation_error, model_digest, job_id),
            )

    def cancel(self, job_id: int) -> str | None:
        """A queued job is cancelled at once; a running one is asked to stop (it does so at
        its next round boundary). The job's state afterwards, or None if there is no job."""
        with self._transaction():
            row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "queued":
                self._db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ?, "
                                 "cancel_requested = 1 WHERE id = ?", (time.time(), job_id))
                return "cancelled"
            if row[0] == "running":
                self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return str(row[0])

    def cancel_requested(self, job_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
        return bool(row and row[0])

    def leaderboard(self, dataset: str, limit: int = 100) -> list[Job]:
        """Finished jobs on `dataset`, best final validation error first; ties: the job that
        took less time, then the earlier one."""
        with self._lock:
            rows = self._db.execute(
                "SELECT jobs.*, (SELECT COALESCE(SUM(round_s), 0) FROM rounds "
                "  WHERE rounds.job_id = jobs.id) AS total_s "
                "FROM jobs WHERE dataset = ? AND state = 'done' "
                "AND final_validation_error IS NOT NULL "
                "ORDER BY final_validation_error, total_s, id LIMIT ?",
                (dataset, limit),
            ).fetchall()
            rounds = self._rounds([r["id"] for r in rows])
            return [self._job(r, rounds) for r in rows]

    def datasets_with_results(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT dataset FROM jobs WHERE state = 'done' "
                                    "ORDER BY dataset").fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state, every state present."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        found = {r[0]: r[1] for r in rows}
        return {state: found.get(state, 0) for state in STATES}

    # -- events -----------------------------------------------------------------------------

    def add_event(self, kind: str, message: str, cause: str = "") -> None:
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO events (at, kind, message, cause) VALUES (?, ?, ?, ?)",
                (time.time(), kind, message[:500], cause[:500]),
            )
            if (cursor.lastrowid or 0) % 100 == 0:
                self._db.execute("DELETE FROM events WHERE id <= ?",
                                 ((cursor.lastrowid or 0) - EVENTS_KEPT,))

    def events(self, limit: int = 50) -> list[Event]:
        """The newest events, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [Event(r["id"], r["at"], r["kind"], r["message"], r["cause"]) for r in rows]

    # -- rows to objects -------------------------------------------------------------------

    def _rounds(self, job_ids: list[int]) -> dict[int, list[RoundRecord]]:
        if not job_ids:
            return {}
        rows = self._db.execute(
            f"SELECT * FROM rounds WHERE job_id IN ({','.join('?' * len(job_ids))}) "
            "ORDER BY job_id, round",
            job_ids,
        ).fetchall()
        found: dict[int, list[RoundRecord]] = {}
        for r in rows:
            found.setdefault(r["job_id"], []).append(RoundRecord(
                r["round"], r["validation_error"], r["train_loss"], r["round_s"],
                r["retries"], r["declined"]))
        return found

    @staticmethod
    def _job(row: sqlite3.Row, rounds: dict[int, list[RoundRecord]]) -> Job:
        return Job(
            id=row["id"], user=row["username"], dataset=row["dataset"],
            settings=json.loads(row["settings"]), state=row["state"],
            submitted_at=row["submitted_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], starts=row["starts"], error=row["error"],
            final_validation_error=row["final_validation_error"],
            model_digest=row["model_digest"], cancel_requested=bool(row["cancel_requested"]),
            rounds=rounds.get(row["id"], []),
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the registry's lock; ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        finally:
            self._lock.release()


def _statements(script: str) -> list[str]:
    """A migration script's statements (none of ours holds a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def _claim(path: Path) -> Any:
    """An exclusive lock beside the file: two gateways on one registry would both think
    they own its running jobs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(f"{path}.lock", "a")  # noqa: SIM115 - held for the registry's lifetime
    except OSError as exc:
        raise StoreError(f"cannot use {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StoreError(f"{path} is in use by another gateway (pid in {path}.lock); give "
                         "each gateway its own --db") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
