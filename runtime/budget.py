"""A task's time budget ran out: one error, whether the node stops the task or hears of it."""

from __future__ import annotations


class OutOfTime(TimeoutError):
    """The task's time budget (budget_s seconds) ran out before training ended; it was stopped."""

    def __init__(self, message: str, budget_s: float) -> None:
        super().__init__(message)
        self.budget_s = budget_s
