"""One job, run by the client's own round driver: settings in, rounds recorded, model out.

Each job owns a directory (checkpoint.npz, timing.txt, model.npz). The checkpoint is what
makes the registry's promise good: a job interrupted by a gateway crash is taken up with
--resume semantics and ends with bitwise the weights of an uninterrupted run, because
run_rounds is the same code `python -m client` runs and a round's result depends only on
the weights it starts from.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from client.coordinator_link import CoordinatorLink, RoundFailed
from client.federated_cli import run_config_fields
from client.serving import ServingFailed, ServingLink, read_model_file
from client.training import RoundReport, RunConfig, run_rounds
from gateway.datasets import Catalogue
from gateway.scheduler import JobControl
from gateway.store import Job, Registry, RoundRecord
from idl.rpc import Address
from runtime.events import log_event

# What a job may set, with the client's defaults: the names of `python -m client`'s options.
DEFAULTS: dict[str, Any] = {"seed": 1, "batch_size": 0, "momentum": 0.0, "standardize": False,
                            "init": "uniform", "policy": ""}
# The federated options, as the client's command line gives them to run_config_fields (None:
# not given). No dp_seed: a job's settings are shown to every user (the leaderboard), and the
# noise's seed must stay secret, so a job's noise is seeded by its seed.
FEDERATED: dict[str, Any] = {
    "strategy": "fedavg", "server_lr": None, "server_momentum": None, "beta1": None,
    "beta2": None, "tau": None, "trim_fraction": None, "krum_f": None, "krum_m": None,
    "lr_schedule": "constant", "lr_step_rounds": None, "lr_gamma": None, "lr_min": None,
    "prox_mu": 0.0, "fraction": 1.0, "dp_clip": None, "dp_noise_multiplier": None,
}


def federated_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """RunConfig's federated fields from a job's settings, checked as the client checks its
    options; ValueError (naming the setting) for one that does not apply or does not fit."""
    values = {key: settings.get(key, default) for key, default in FEDERATED.items()}
    try:
        fields = run_config_fields({**values, "dp_seed": None})
    except click.UsageError as exc:  # the client's words name options: these are fields
        raise ValueError(re.sub(r"--([a-z0-9-]+)", lambda m: m.group(1).replace("-", "_"),
                                exc.message)) from None
    if fields["prox_mu"] * settings["eta"] > 1:
        raise ValueError(f"prox_mu x eta is {fields['prox_mu'] * settings['eta']:g}: it must "
                         "be at most 1 (the proximal pull would overshoot the round's weights)")
    return fields


@dataclass(frozen=True)
class Cluster:
    """Where jobs run and how the gateway reaches it."""

    coordinators: list[Address]
    token: str = field(default="", repr=False)
    tls: ssl.SSLContext | None = None
    round_deadline_s: float = 600.0


class JobCancelled(Exception):
    """DELETE /v1/jobs/{id} reached a running job: it stops at the round boundary."""


class GatewayStopping(Exception):
    """The gateway is shutting down: the job stays `running`, to resume at the next start."""


def job_files(jobs_dir: Path, job_id: int) -> dict[str, Path]:
    folder = jobs_dir / str(job_id)
    return {"dir": folder, "checkpoint": folder / "checkpoint.npz",
            "timing": folder / "timing.txt", "model": folder / "model.npz"}


def run_config(job: Job, data_dir: Path, files: dict[str, Path], cluster: Cluster) -> RunConfig:
    """The RunConfig `python -m client` would build from the same settings."""
    s = {**DEFAULTS, **job.settings}
    return RunConfig(
        data_dir=data_dir, rounds=s["rounds"], epochs=s["epochs"], hidden=s["h"],
        eta=s["eta"], seed=s["seed"], batch_size=s["batch_size"], momentum=s["momentum"],
        standardize=s["standardize"], init=s["init"], policy=s["policy"],
        round_deadline_s=cluster.round_deadline_s, token=cluster.token,
        timing_path=files["timing"], checkpoint_path=files["checkpoint"],
        model_out=files["model"], resume=files["checkpoint"].exists(),
        **federated_fields(s),
    )


class JobRunner:
    """Runs a job to its end and records every step in the registry."""

    def __init__(self, registry: Registry, catalogue: Catalogue, cluster: Cluster,
                 jobs_dir: Path) -> None:
        self._registry = registry
        self._catalogue = catalogue
        self._cluster = cluster
        self._jobs_dir = jobs_dir

    def __call__(self, job: Job, control: JobControl) -> None:
        files = job_files(self._jobs_dir, job.id)
        try:
            files["dir"].mkdir(parents=True, exist_ok=True)
            config = run_config(job, self._catalogue.path(job.dataset), files, self._cluster)
            if config.resume:
                log_event("job_resumed", job=job.id, checkpoint=files["checkpoint"])

            def on_round(report: RoundReport) -> None:
                self._registry.add_round(job.id, RoundRecord(
                    report.round, report.validation_error, report.train_loss, report.seconds,
                    report.failed, report.declined))
                self._registry.add_event(
                    "round_done", f"job {job.id}: round {report.round}/{report.rounds}, "
                    f"validation error {report.validation_error:.2%}",
                    f"{report.failed} task(s) retried" if report.failed else "")
                if control.cancelled.is_set() or self._registry.cancel_requested(job.id):
                    raise JobCancelled
                if control.stopping.is_set():
                    raise GatewayStopping

            if control.cancelled.is_set():
                raise JobCancelled
            def link(paths: dict[str, Path]) -> CoordinatorLink:
                return CoordinatorLink(self._cluster.coordinators, paths, self._cluster.tls)

            summary = run_rounds(config, link, on_round=on_round,
                                 on_note=lambda line: log_event("job_note", job=job.id, note=line),
                                 on_warning=lambda line: log_event(
                                     "job_warning", level=logging.WARNING, job=job.id, note=line))
        except JobCancelled:
            self._registry.finish(job.id, "cancelled")
            self._registry.add_event("job_cancelled", f"job {job.id} cancelled",
                                     "stopped at a round boundary, as asked")
            log_event("job_cancelled", job=job.id)
            return
        except GatewayStopping:
            log_event("job_left_running", job=job.id, why="the gateway is stopping")
            return
        except (RoundFailed, ValueError, LookupError, OSError) as exc:
            # RoundFailed: the cluster; ValueError: data, checkpoint or settings; LookupError:
            # the dataset is gone; OSError: the job's directory. The message says which.
            message = _one_line(exc)
            self._registry.finish(job.id, "failed", error=message)
            self._registry.add_event("job_failed", f"job {job.id} failed", message)
            log_event("job_failed", level=logging.WARNING, job=job.id, error=message)
            return
        digest = self._register_model(job, files["model"])
        self._registry.finish(job.id, "done", final_validation_error=summary.validation_error,
                              model_digest=digest)
        self._registry.add_event("job_done", f"job {job.id} done: validation error "
                                             f"{summary.validation_error:.2%}",
                                 f"{config.rounds} rounds finished")
        log_event("job_done", job=job.id, validation_error=summary.validation_error)

    def _register_model(self, job: Job, path: Path) -> str | None:
        """Put the model in the cluster at once; its digest either way (None if unreadable)."""
        try:
            model = read_model_file(path)
        except ValueError as exc:
            log_event("model_unreadable", level=logging.WARNING, job=job.id, error=exc)
            return None
        link = ServingLink(self._cluster.coordinators, self._cluster.token, self._cluster.tls)
        started = time.perf_counter()
        try:
            where = link.register(model)
            log_event("model_registered", job=job.id, digest=model.digest[:12],
                      coordinator=where, seconds=time.perf_counter() - started)
        except ServingFailed as exc:  # predictions upload it on demand
            log_event("model_not_registered", level=logging.WARNING, job=job.id, error=exc)
        finally:
            link.close()
        return model.digest


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:2000]
