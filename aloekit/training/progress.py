"""transformers ``TrainerCallback``s: one reports steps and loss to a callable (the CLI's progress bar), one
stops training from another thread."""

from __future__ import annotations

import threading
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


class StopWhenSet(TrainerCallback):
    """Ends training after the current step once ``event`` is set: a trainer running in a worker thread
    never sees Ctrl-C or SIGTERM, which reach only the main thread."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Ask the trainer to stop if the event is set."""
        if self.event.is_set():
            control.should_training_stop = True
