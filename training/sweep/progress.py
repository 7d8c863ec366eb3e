"""One line per trial on the sweep driver's console, from Ray Tune's callbacks: started,
finished (with its validation NDCG@10, cross-entropy, epochs and time) or failed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback


class TrialProgress(Callback):
    """Logs each trial's start, end or failure; ``labels`` maps a trial key to its label."""

    def __init__(self, labels: dict[str, str], log: Callable[[str], None]) -> None:
        self.labels, self.log = labels, log
        self.started: dict[str, float] = {}
        self.ended = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (callbacks included) into the experiment's folder, for a
        # Tuner.restore this module never calls (a sweep resumes from MLflow); the console or
        # Dagster logger ``log`` writes to does not pickle, so a pickled copy prints instead.
        return {**self.__dict__, "log": print}

    def _label(self, trial: Any) -> str:
        return self.labels.get(trial.config.get("trial", ""), str(trial))

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()
        self.log(f"trial {self._label(trial)}: started")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended += 1
        result = trial.last_result or {}
        shown = ", ".join(
            f"{key} {result[key]:.4f}"
            for key in ("best_val_ndcg_10", "best_val_all_ndcg_10", "val_cross_entropy")
            if key in result
        )
        self.log(f"trial {self._label(trial)} ({self.ended}/{len(self.labels)}): {shown}, "
                 f"{result.get('epochs_run', 0):.0f} epochs, {self._minutes(trial)}")  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended += 1
        self.log(f"trial {self._label(trial)} ({self.ended}/{len(self.labels)}) FAILED after {self._minutes(trial)}: "
                 f"{trial.error_file or 'see its Ray log'}")  # fmt: skip

    def _minutes(self, trial: Any) -> str:
        return f"{(time.monotonic() - self.started.get(trial.trial_id, time.monotonic())) / 60:.1f} min"
