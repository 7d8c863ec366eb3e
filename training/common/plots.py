"""Training curves as a PNG (an MLflow artifact of every run)."""

from __future__ import annotations

from pathlib import Path


def plot_curves(history: list[dict[str, float]], selection_metric: str, path: Path) -> Path:
    """A PNG of the train loss and the validation HR@10 / selection metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o")
    loss_axis.set(title="train loss", xlabel="epoch")
    for key in dict.fromkeys(["val_hr_10", f"val_{selection_metric}"]):
        if key in history[0]:
            metric_axis.plot(epochs, [row[key] for row in history], marker="o", label=key)
    metric_axis.set(title="validation", xlabel="epoch")
    metric_axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
