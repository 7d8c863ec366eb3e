"""One seed of RecBole's SASRec, run as a script by the reference environment's Python.

    <venv>/bin/python benchmarks/reference/recbole_driver.py --data-dir D --name wikipedia \
        --seed 0 --config '{"hidden_size": 50, ...}' --out result.json

It imports RecBole and torch of that environment and nothing of streamrec. Training,
early stopping and the metrics are RecBole's own (``Trainer.fit``, ``Trainer.evaluate``),
with two changes, both for streamrec's protocol:

* ``seen_filtered``: RecBole masks no history for sequential models in full-sort evaluation
  (its ``FullSortEvalDataLoader`` passes no history index for them). streamrec's default
  protocol removes the items of the row's history (the ``max_len`` events the model reads)
  before ranking, so a target the user saw before cannot be hit. ``mask_history`` does that
  to RecBole's scores; validation (the early-stopping metric) and test use it, and test is
  read once more without it (``all_items``).
* The best epoch's weights are kept in memory instead of RecBole's checkpoint file: reading
  that file back needs ``torch.load(weights_only=False)``, refused by default since torch 2.6.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch


def mask_history(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """``scores`` (B, items) with every item of the row's ``history`` (B, L, 0 = padding) and
    the padding item 0 set to -inf, in place."""
    scores.scatter_(1, history.to(scores.device).long(), float("-inf"))
    scores[:, 0] = float("-inf")
    return scores


def run(data_dir: Path, name: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train SASRec on ``<data_dir>/<name>`` (benchmark files) with ``seed``; the test metrics."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    class SeenFilteredTrainer(Trainer):
        """RecBole's Trainer with history masking and the best weights kept in memory."""

        mask = True
        best_epoch = -1
        best_state: dict[str, torch.Tensor] | None = None
        train_seconds: list[float] = []
        valid_seconds: list[float] = []

        def _train_epoch(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            loss = super()._train_epoch(*args, **kwargs)
            self.train_seconds.append(round(time.perf_counter() - started, 2))
            return loss

        def _valid_epoch(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            score = super()._valid_epoch(*args, **kwargs)
            self.valid_seconds.append(round(time.perf_counter() - started, 2))
            return score

        def _full_sort_batch_eval(self, batched_data: Any) -> Any:
            interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
            if self.mask:
                mask_history(scores, interaction[self.model.ITEM_SEQ])
            return interaction, scores, positive_u, positive_i

        def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(self.model.state_dict())

    config = Config(model="SASRec", dataset=name, config_dict={**overrides, "data_path": str(data_dir), "seed": seed})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)  # per-epoch lines on stdout and under log/ of the working directory
    started = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = SeenFilteredTrainer(config, model)
    loaded = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, verbose=True, saved=True, show_progress=False)
    trained = time.perf_counter()
    assert trainer.best_state is not None, "no epoch was validated"
    model.load_state_dict(trainer.best_state)
    seen = trainer.evaluate(test_data, load_best_model=False)
    trainer.mask = False
    everything = trainer.evaluate(test_data, load_best_model=False)
    return {
        "seed": seed,
        "best_epoch": trainer.best_epoch + 1,  # 1-based, as streamrec counts epochs
        "epochs_run": len(trainer.train_loss_dict),
        "best_valid_ndcg_10": float(best_valid),
        "test_ndcg_10": float(seen["ndcg@10"]),
        "test_hr_10": float(seen["hit@10"]),
        "test_all_ndcg_10": float(everything["ndcg@10"]),
        "test_all_hr_10": float(everything["hit@10"]),
        "load_seconds": round(loaded - started, 1),
        "fit_seconds": round(trained - loaded, 1),
        "epoch_train_seconds": trainer.train_seconds,
        "epoch_valid_seconds": trainer.valid_seconds,
        "torch_threads": torch.get_num_threads(),
        "rows": {"train": len(train_data.dataset), "valid": len(valid_data.dataset), "test": len(test_data.dataset)},
        "items": int(dataset.item_num - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--config", required=True, help="RecBole settings as a JSON object")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run(args.data_dir, args.name, args.seed, json.loads(args.config))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
