"""Plot the train and validation loss of a run's metrics file into a PNG (for model cards).

pip install matplotlib   # only this script needs it
python scripts/plot_metrics.py build/base-run/metrics.jsonl models/base/loss.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from llm.run import read_metrics  # noqa: E402

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def main(metrics_path: str, png_path: str) -> None:
    points = read_metrics(Path(metrics_path)).loss_points()
    train = [(step, loss) for step, loss, curve in points if curve == "train"]
    val = [(step, loss) for step, loss, curve in points if curve == "validation"]
    assert train, f"{metrics_path}: no train_loss records"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(*zip(*train, strict=True), label="train (batch)", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=2, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(f"{Path(metrics_path).parent.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
