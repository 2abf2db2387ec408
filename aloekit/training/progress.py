"""A transformers ``TrainerCallback`` that reports steps and loss to a callable (the CLI's progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


class StepReporter(TrainerCallback):
    """Calls ``report(step, max_steps, logs)`` at every step and log."""

    def __init__(self, report: Callable[[int, int, dict[str, Any]], None]) -> None:
        self.report = report
        self.last_logs: dict[str, Any] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Report progress after each optimiser step."""
        self.report(state.global_step, state.max_steps, self.last_logs)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Remember the latest losses."""
        self.last_logs = {**self.last_logs, **(logs or {})}
        self.report(state.global_step, state.max_steps, self.last_logs)
