"""One line per epoch on the driver's console, read from the metrics rank 0 logs to MLflow.

Ray Train workers print nothing to the driver (their output, Ray's and the libraries' stays
in Ray's worker logs), so a person sees a short, readable record of the run: a line per
epoch with the train loss, the validation metrics under both protocols and the speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from mlflow.exceptions import MlflowException

from infra.settings import Settings
from training.common import tracking

POLL_S = 2.0
SHOWN = ("train_loss", "val_hr_10", "val_ndcg_10", "val_all_hr_10")


class EpochFollower:
    """A daemon thread that prints each new epoch of an MLflow run once (use as a context)."""

    def __init__(self, settings: Settings, run_id: str, epochs: int, log: Callable[[str], None]) -> None:
        self.settings, self.run_id, self.epochs, self.log = settings, run_id, epochs, log
        self.shown: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="streamrec-epoch-follower", daemon=True)

    def __enter__(self) -> EpochFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the last epoch may have been logged after the previous poll

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        """Print the epochs logged since the last poll, in order."""
        try:
            history = self._history()
        except MlflowException:
            return  # the tracking server is briefly unreachable: try again at the next poll
        for epoch in sorted(set(history["train_loss"]) - self.shown):
            self.shown.add(epoch)
            values = {key: history[key].get(epoch) for key in (*SHOWN, "train_seconds", "train_sequences_per_s")}
            shown = ", ".join(f"{key} {values[key]:.4f}" for key in SHOWN if values[key] is not None)
            speed = ""
            if values["train_seconds"] is not None and values["train_sequences_per_s"] is not None:
                speed = f" ({values['train_seconds']:.1f}s, {values['train_sequences_per_s']:.0f} seq/s)"
            self.log(f"epoch {epoch}/{self.epochs}: {shown}{speed}")
            if epoch in history["resumed_from_epoch"]:
                self.log(f"(a worker group restarted here and resumed after epoch {epoch})")

    def _history(self) -> dict[str, dict[int, float]]:
        client = tracking.client(self.settings)
        keys = (*SHOWN, "train_seconds", "train_sequences_per_s", "resumed_from_epoch")
        return {key: {m.step: m.value for m in client.get_metric_history(self.run_id, key)} for key in keys}
