"""Registry records as the JSON the API and the dashboard answer with: one shape each."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from gateway.store import Event, Job


def iso(stamp: float | None) -> str | None:
    """A registry time as ISO 8601 UTC to the second ("2026-11-29T07:12:05Z")."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def job_view(job: Job) -> dict[str, Any]:
    rounds = [{"round": r.round, "validation_error": r.validation_error,
               "train_loss": r.train_loss, "round_s": r.round_s, "retries": r.retries,
               "declined": r.declined} for r in job.rounds]
    train_s = sum(r.round_s for r in job.rounds)
    return {
        "id": job.id, "user": job.user, "dataset": job.dataset, "state": job.state,
        "settings": job.settings, "rounds": rounds,
        "final_validation_error": job.final_validation_error,
        "timing": {"rounds_done": len(rounds), "train_s": train_s,
                   "mean_round_s": train_s / len(rounds) if rounds else None,
                   "retries": sum(r.retries for r in job.rounds),
                   "declined": sum(r.declined for r in job.rounds),
                   "starts": job.starts},
        "submitted_at": iso(job.submitted_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "cancel_requested": job.cancel_requested,
        "error": job.error,
    }


def time_to_target(job: Job, target: float) -> float | None:
    """Training seconds until the validation error first reached `target`; None if never."""
    elapsed = 0.0
    for r in job.rounds:
        elapsed += r.round_s
        if r.validation_error <= target:
            return elapsed
    return None


def leaderboard_entry(rank: int, job: Job, target: float) -> dict[str, Any]:
    return {
        "rank": rank, "job": job.id, "user": job.user, "dataset": job.dataset,
        "validation_error": job.final_validation_error, "settings": job.settings,
        "rounds": len(job.rounds), "train_s": sum(r.round_s for r in job.rounds),
        "target_error": target, "time_to_target_s": time_to_target(job, target),
        "finished_at": iso(job.finished_at),
    }


def event_view(event: Event) -> dict[str, Any]:
    return {"id": event.id, "at": iso(event.at), "kind": event.kind,
            "message": event.message, "cause": event.cause}
