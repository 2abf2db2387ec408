"""A transformers ``TrainerCallback`` that reports steps and loss to a callable (the CLI's progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


class StepReporter(TrainerCallback):
    """Calls ``report(step, max_steps, logs)`` at every step and log; ``logs`` holds only this step's values."""

    def __init__(self, report: Callable[[int, int, dict[str, Any]], None]) -> None:
        self.report = report
        self.logs: dict[str, Any] = {}
        self.logged_step = -1

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Report progress after each optimiser step (transformers logs that step's loss after this call)."""
        self.report(state.global_step, state.max_steps, self.logs if self.logged_step == state.global_step else {})

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Report the values logged at this step."""
        if self.logged_step != state.global_step:
            self.logs, self.logged_step = {}, state.global_step
        self.logs = {**self.logs, **(logs or {})}
        self.report(state.global_step, state.max_steps, self.logs)
