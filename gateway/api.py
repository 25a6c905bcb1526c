"""The HTTP/JSON API: thin handlers over the registry, the scheduler and the client's links.

Every answer is JSON; every error is {"detail": "<what to do>"} with a fitting status,
including bodies that fail validation (422, one readable line instead of pydantic's list)
and anything unexpected (500 with a reference to the log line, never a traceback).
`Authorization: Bearer TOKEN` is needed on every call but registration, login, /v1/health
and the OpenAPI pages.
"""


import logging
import math
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from client.federated_cli import SCHEDULES, STRATEGIES
from client.serving import ModelFile, ServingFailed, ServingLink, read_model_file
from gateway.accounts import PASSWORD_MAX, PASSWORD_MIN, USERNAME, Accounts, Principal
from gateway.dashboard import STATIC, dashboard_view
from gateway.datasets import NAME, BadDatasetName, Catalogue, UnknownDataset
from gateway.jobs import DEFAULTS, Cluster, federated_fields, job_files
from gateway.limits import RateLimiter
from gateway.scheduler import Scheduler
from gateway.store import STATES, Job, Registry
from gateway.views import iso, job_view, leaderboard_entry
from gateway.watch import ClusterWatch, NoCoordinator, first_status, node_view

log = logging.getLogger("fedcluster.gateway.api")


PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

# A job id as SQLite stores it (a signed 64-bit integer): a larger one would fail the query
# with OverflowError, a 500 instead of a 404 or a 422.
ID_MAX = 2**63 - 1
JobId = Annotated[int, PathParam(ge=1, le=ID_MAX)]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is a --max-... option of the gateway."""

    max_rounds: int = 1000
    max_epochs: int = 10_000
    max_hidden: int = 4096
    max_queued_per_user: int = 20
    max_predict_rows: int = 10_000
    max_list: int = 1000


@dataclass
class Gateway:
    """Everything the handlers need, made once by `python -m gateway`."""

    registry: Registry
    accounts: Accounts
    catalogue: Catalogue
    scheduler: Scheduler
    cluster: Cluster
    jobs_dir: Path
    limits: Limits
    user_rate: RateLimiter
    login_rate: RateLimiter
    closed_registration: bool = False
    target_error: float = 0.3
    watch: ClusterWatch | None = None  # the dashboard's view of the cluster
    public_dashboard: bool = False


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # pydantic searches for a pattern anywhere in the string: anchored, it is the whole name
    username: str = Field(min_length=3, max_length=32, pattern=f"^{USERNAME.pattern}$")
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)


class JobRequest(BaseModel):
    """The settings `python -m client` takes, by the names of its arguments and options."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(min_length=1, max_length=64)
    rounds: int = Field(ge=1, strict=True)
    epochs: int = Field(ge=1, strict=True)
    h: int = Field(ge=1, strict=True)
    eta: float = Field(gt=0, le=1e6, allow_inf_nan=False)
    seed: int = Field(default=DEFAULTS["seed"], ge=-(2**63), lt=2**63, strict=True)
    batch_size: int = Field(default=DEFAULTS["batch_size"], ge=0, le=10_000_000, strict=True)
    momentum: float = Field(default=DEFAULTS["momentum"], ge=0, lt=1, allow_inf_nan=False)
    standardize: bool = Field(default=DEFAULTS["standardize"], strict=True)
    init: Literal["uniform", "he", "glorot"] = DEFAULTS["init"]
    policy: Literal["", "random", "load-aware", "round-robin"] = DEFAULTS["policy"]
    # The federated options (README, "Federated strategies"); null: the client's default.
    strategy: Literal[STRATEGIES] = "fedavg"  # type: ignore[valid-type]
    server_lr: float | None = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)
    server_momentum: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    beta1: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    beta2: float | None = Field(default=None, ge=0, lt=1, allow_inf_nan=False)
    tau: float | None = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)
    trim_fraction: float | None = Field(default=None, ge=0, lt=0.5, allow_inf_nan=False)
    krum_f: int | None = Field(default=None, ge=0, le=1_000_000, strict=True)
    krum_m: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    lr_schedule: Literal[SCHEDULES] = "constant"  # type: ignore[valid-type]
    lr_step_rounds: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    lr_gamma: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    lr_min: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    prox_mu: float = Field(default=0.0, ge=0, le=1e6, allow_inf_nan=False)
    fraction: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    dp_clip: float | None = Field(default=None, gt=0, le=1e12, allow_inf_nan=False)
    dp_noise_multiplier: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[list[float]] = Field(min_length=1)
    probabilities: bool = False


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(title="fedcluster gateway", version="1",
                  description="Accounts, a queue of training jobs, the run registry and a "
                              "leaderboard for a fedcluster cluster.")
    _install_error_handlers(app)
    models = ModelFiles()

    def caller_ip(request: Request) -> str:
        return request.client.host if request.client else "?"

    def login_rate(request: Request) -> None:
        _rate_or_429(gw.login_rate, caller_ip(request))

    def bearer(request: Request) -> Principal | None:
        """Whoever the `Authorization: Bearer TOKEN` header names, if anyone."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return gw.accounts.principal(token.strip()) if scheme.lower() == "bearer" else None

    def principal(request: Request) -> Principal:
        who = bearer(request)
        if who is None:
            _rate_or_429(gw.login_rate, caller_ip(request))  # guessing costs like logging in
            raise HTTPException(401, "missing, unknown or expired token: log in with "
                                     "POST /v1/tokens and send 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})
        _rate_or_429(gw.user_rate, who.token_digest)
        return who

    Caller = Annotated[Principal, Depends(principal)]

    def own_job(job_id: int, who: Principal) -> Job:
        job = gw.registry.job(job_id)
        if job is None or not (who.admin or job.user == who.username):
            raise HTTPException(404, f"no job {job_id} of yours: GET /v1/jobs lists them")
        return job

    @app.get("/v1/health", tags=["service"])
    def health() -> dict:
        """Liveness for probes and scripts: no token, nothing about users or jobs."""
        return {"status": "ok"}

    @app.post("/v1/users", status_code=201, tags=["accounts"],
              dependencies=[Depends(login_rate)])
    def register(body: Credentials, request: Request) -> dict:
        if gw.closed_registration:
            who = bearer(request)
            if who is None or not who.admin:
                raise HTTPException(403, "registration is closed on this gateway: ask its "
                                         "operator for an account")
        if not gw.accounts.register(body.username, body.password):
            raise HTTPException(409, f"the username {body.username!r} is taken: choose another")
        return {"username": body.username}

    @app.post("/v1/tokens", tags=["accounts"], dependencies=[Depends(login_rate)])
    def log_in(body: Credentials) -> dict:
        got = gw.accounts.log_in(body.username, body.password)
        if got is None:
            raise HTTPException(401, "wrong username or password",
                                headers={"WWW-Authenticate": "Bearer"})
        token, expires_at = got
        return {"token": token, "expires_at": iso(expires_at), "token_type": "bearer"}

    @app.get("/v1/datasets", tags=["data"])
    def datasets(who: Caller) -> list[dict]:
        return [{"name": d.name, "shards": d.shards, "rows": d.rows,
                 "attributes": d.attributes, "classes": d.classes,
                 "validation_rows": d.validation_rows} for d in gw.catalogue.list()]

    @app.post("/v1/jobs", status_code=201, tags=["jobs"])
    def submit(body: JobRequest, who: Caller) -> dict:
        limits = gw.limits
        for name, value, most, option in (
            ("rounds", body.rounds, limits.max_rounds, "--max-rounds"),
            ("epochs", body.epochs, limits.max_epochs, "--max-epochs"),
            ("h", body.h, limits.max_hidden, "--max-hidden"),
        ):
            if value > most:
                raise HTTPException(422, f"{name}: {value} is more than this gateway allows "
                                         f"({most}, its {option})")
        try:
            info = gw.catalogue.describe(body.dataset)
        except (BadDatasetName, UnknownDataset) as exc:
            raise HTTPException(400, str(exc)) from None
        if info is None:
            raise HTTPException(400, f"dataset {body.dataset!r} cannot be read: ask the "
                                     "gateway's operator")
        settings = body.model_dump(exclude={"dataset"})
        try:
            federated_fields(settings)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        job = gw.registry.add_job(who.username, body.dataset, settings,
                                  limits.max_queued_per_user)
        if job is None:
            raise HTTPException(429, f"you have {limits.max_queued_per_user} jobs queued, "
                                     "the most this gateway holds per user: wait for some "
                                     "to start, or cancel some")
        gw.registry.add_event("job_queued", f"job {job.id} queued by {who.username}",
                              f"{body.dataset}: {body.rounds} rounds of {body.epochs} "
                              f"epochs, h {body.h}")
        gw.scheduler.wake()
        return {"id": job.id, "state": job.state}

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(who: Caller,
                  state: Annotated[Literal[STATES] | None, Query()] = None,  # type: ignore[valid-type]
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  before: Annotated[int | None, Query(ge=1, le=ID_MAX)] = None) -> list[dict]:
        """Your jobs, newest first (an admin sees everyone's); `before` pages back by id."""
        states = (state,) if state else STATES
        jobs = gw.registry.jobs(None if who.admin else who.username, states,
                                min(limit, gw.limits.max_list), before)
        return [job_view(j) for j in jobs]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: JobId, who: Caller) -> dict:
        return job_view(own_job(job_id, who))

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    def cancel_job(job_id: JobId, who: Caller) -> dict:
        """A queued job is cancelled at once; a running one stops at its next round."""
        job = own_job(job_id, who)
        if job.state in ("done", "failed", "cancelled"):
            raise HTTPException(409, f"job {job_id} is already {job.state}")
        state = gw.scheduler.cancel(job_id)
        if state == "cancelled":
            gw.registry.add_event("job_cancelled", f"job {job_id} cancelled",
                                  f"by {who.username}, while it waited")
        else:
            gw.registry.add_event("job_cancel_requested",
                                  f"job {job_id} stops at its next round",
                                  f"cancelled by {who.username} while running")
        return {"id": job_id, "state": state, "cancel_requested": True}

    @app.get("/v1/jobs/{job_id}/timing", tags=["jobs"])
    def job_timing(job_id: JobId, who: Caller) -> FileResponse:
        """The job's timing.txt, as `python -m client --timing` writes it."""
        own_job(job_id, who)
        path = job_files(gw.jobs_dir, job_id)["timing"]
        if not path.exists():
            raise HTTPException(404, f"job {job_id} has no timing yet: it has not started")
        return FileResponse(path, media_type="text/plain; charset=utf-8")

    @app.get("/v1/jobs/{job_id}/model", tags=["jobs"])
    def job_model(job_id: JobId, who: Caller) -> FileResponse:
        """The finished job's model file (.npz), usable with `python -m client predict`."""
        job = own_job(job_id, who)
        path = job_files(gw.jobs_dir, job_id)["model"]
        if job.state != "done" or not path.exists():
            raise HTTPException(409, f"job {job_id} is {job.state}: its model comes when it "
                                     "is done")
        return FileResponse(path, media_type="application/octet-stream",
                            filename=f"job-{job_id}-model.npz")

    @app.post("/v1/jobs/{job_id}/predict", tags=["jobs"])
    def predict(job_id: JobId, body: PredictBody, who: Caller) -> dict:
        """Label rows of raw attributes with the job's model, served by the cluster."""
        job = own_job(job_id, who)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}: predictions come once it "
                                     "is done")
        if len(body.rows) > gw.limits.max_predict_rows:
            raise HTTPException(422, f"rows: {len(body.rows)} rows, more than one request may "
                                     f"carry ({gw.limits.max_predict_rows})")
        model = models.get(job_id, job_files(gw.jobs_dir, job_id)["model"])
        width = model.servable.n_features
        for i, row in enumerate(body.rows):
            if len(row) != width:
                raise HTTPException(422, f"rows[{i}]: {len(row)} values; the model takes "
                                         f"{width} attributes per row")
            if not all(math.isfinite(v) for v in row):
                raise HTTPException(422, f"rows[{i}]: every value must be a finite number")
        link = ServingLink(gw.cluster.coordinators, gw.cluster.token, gw.cluster.tls)
        try:
            answer = link.predict(model, np.asarray(body.rows, dtype=np.float64),
                                  probabilities=body.probabilities)
        except ServingFailed as exc:
            raise HTTPException(503, f"the cluster could not predict: {exc}") from None
        finally:
            link.close()
        names = model.servable.class_names
        out: dict[str, Any] = {"labels": [names[int(i)] for i in answer.labels],
                               "classes": [int(i) for i in answer.labels]}
        if answer.probabilities is not None:
            out["probabilities"] = answer.probabilities.tolist()
            out["class_names"] = list(names)
        return out

    @app.get("/v1/leaderboard", tags=["jobs"])
    def leaderboard(who: Caller, dataset: Annotated[str, Query(min_length=1, max_length=64)],
                    target: Annotated[float | None, Query(gt=0, le=1)] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        """Finished jobs on a dataset, best final validation error first (ties: less time)."""
        if not NAME.fullmatch(dataset):
            raise HTTPException(400, f"dataset {dataset[:80]!r} is not a dataset name")
        goal = target if target is not None else gw.target_error
        board = [leaderboard_entry(rank, job, goal) for rank, job in
                 enumerate(gw.registry.leaderboard(dataset, limit), start=1)]
        return board

    @app.get("/v1/status", tags=["service"])
    def status(who: Caller) -> dict:
        """The cluster as the first coordinator that answers sees it, and the job queue."""
        try:
            address, got = first_status(gw.cluster.coordinators, gw.cluster.tls,
                                        gw.cluster.token, 5.0)
        except NoCoordinator as exc:
            raise HTTPException(503, str(exc)) from None
        return {"coordinator": str(address), "policy": got.policy,
                "nodes": [node_view(n) for n in got.nodes or []],
                "counters": dict(got.counters or {}), "jobs": gw.registry.counts()}

    def viewer(request: Request) -> Principal | None:
        """Anyone under --public-dashboard (rate-limited by address); else a token."""
        if gw.public_dashboard:
            _rate_or_429(gw.user_rate, f"ip:{caller_ip(request)}")
            return None
        return principal(request)

    @app.get("/v1/dashboard", tags=["dashboard"])
    def dashboard(who: Annotated[Principal | None, Depends(viewer)]) -> dict:
        """Everything the dashboard page shows, in one answer: nodes, counters, the queue and
        running jobs with their curves, leaderboards, recent events. Read-only."""
        return dashboard_view(gw.registry, gw.watch.snapshot() if gw.watch else None,
                              public=gw.public_dashboard, target_error=gw.target_error)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The dashboard: its own files only (the policy forbids anything else), never
        framed by another site."""
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": PAGE_POLICY,
                                     "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app


class ModelFiles:
    """The last few finished jobs' model files, parsed once; handlers run on many threads."""

    def __init__(self, most: int = 8) -> None:
        self._most = most
        self._files: OrderedDict[int, ModelFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: int, path: Path) -> ModelFile:
        with self._lock:
            model = self._files.pop(job_id, None)
        if model is None:
            try:
                model = read_model_file(path)
            except ValueError as exc:
                raise HTTPException(500, f"job {job_id}'s model cannot be read: {exc}") from None
        with self._lock:
            self._files[job_id] = model
            while len(self._files) > self._most:
                self._files.popitem(last=False)
        return model


def _rate_or_429(limiter: RateLimiter, key: str) -> None:
    wait_s = limiter.wait_s(key)
    if wait_s > 0:
        raise HTTPException(429, f"too many requests: try again in {wait_s:.1f} s",
                            headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc.errors())}, 422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = secrets.token_hex(4)
        log.error("error %s on %s %s", reference, request.method, request.url.path,
                  exc_info=exc)
        return JSONResponse({"detail": f"the gateway failed on this request (reference "
                                       f"{reference} in its log); try again, or tell its "
                                       "operator"}, 500)


def validation_message(errors: Any) -> str:
    """pydantic's error list as one line a person can act on: `field: what is wrong`."""
    parts = []
    for error in list(errors)[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
        kind = error.get("type", "")
        if kind == "json_invalid":
            parts.append("the body is not valid JSON")
            continue
        if kind in ("model_attributes_type", "dict_type") and not where:
            parts.append("the body must be a JSON object (and sent as "
                         "Content-Type: application/json)")
            continue
        if kind == "missing" and not where:
            parts.append("a JSON body is required")
            continue
        if kind == "extra_forbidden":
            parts.append(f"{where}: not a field this call takes")
            continue
        message = str(error.get("msg", "invalid"))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"
