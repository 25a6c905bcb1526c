"""What the dashboard page shows, as one JSON answer, and where the page itself lives.

The page (static/index.html, dashboard.js, dashboard.css, and Chart.js in static/vendor
with its licence) has no build step: plain files the gateway serves. It polls
GET /v1/dashboard once a second, so a restarted gateway is picked up by the next poll.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway.store import FINAL_STATES, Registry
from gateway.views import event_view, iso, job_view, leaderboard_entry
from gateway.watch import Snapshot, status_view

STATIC = Path(__file__).resolve().parent / "static"
MAX_QUEUED_SHOWN = 50
MAX_RUNNING_SHOWN = 256  # --max-running's bound
RECENT_JOBS = 10
LEADERS_SHOWN = 5
EVENTS_SHOWN = 50


def dashboard_view(registry: Registry, snapshot: Snapshot | None, *, public: bool = False,
                   target_error: float = 0.3) -> dict[str, Any]:
    queued, _ = registry.queue()
    # their rounds in one query, oldest first as the queue lists them
    running = registry.jobs(states=("running",), limit=MAX_RUNNING_SHOWN)[::-1]
    return {
        "generated_at": iso(time.time()),
        "public": public,
        "cluster": status_view(snapshot if snapshot is not None else Snapshot(
            error="the gateway does not watch the cluster")),
        "jobs": {
            "counts": registry.counts(),
            "queued": [job_view(j) for j in queued[:MAX_QUEUED_SHOWN]],
            "running": [job_view(j) for j in running],
            "recent": [job_view(j) for j in registry.jobs(states=tuple(sorted(FINAL_STATES)),
                                                          limit=RECENT_JOBS)],
        },
        "leaderboards": {
            dataset: [leaderboard_entry(rank, job, target_error) for rank, job in
                      enumerate(registry.leaderboard(dataset, LEADERS_SHOWN), start=1)]
            for dataset in registry.datasets_with_results()
        },
        "events": [event_view(e) for e in registry.events(EVENTS_SHOWN)],
    }
