"""One module a tab; each has build(studio, demo) that lays the tab out and wires its events."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from llm.run import Metrics

LOSS_COLUMNS = ["step", "loss", "curve"]
# Events that only read (tab fills, dropdown changes, the plan, refresh timers): no queue of their own to
# wait in, so four open pages, a running fine-tune or a generation never hold them up. Generation and batch
# scoring keep a concurrency limit.
LIGHT: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": None}


def dropdown(**kwargs: Any) -> gr.Dropdown:
    """A dropdown whose choices are filled at run time (datasets, models and runs change in other tabs and
    sessions). Gradio checks a value against the choices this session last saw, so the server must accept
    others; every handler looks the value up itself and says when it is unknown."""
    return gr.Dropdown(allow_custom_value=True, **kwargs)


def loss_plot(**kwargs: Any) -> gr.LinePlot:
    """A run's train/validation loss curve, fed a DataFrame with columns step, loss, curve."""
    return gr.LinePlot(
        x="step",
        y="loss",
        color="curve",
        label="Loss (blue: training batches, orange: validation)",
        colors_in_legend=[],  # Gradio cuts a legend below the plot off; the label says it
        height=300,
        color_map={"train": "#4f7cff", "validation": "#f5a524"},
        **kwargs,
    )


def loss_frame(metrics: Metrics, run: str | None = None) -> pd.DataFrame:
    """A run's loss curve for loss_plot: columns step (int), loss (float), curve ("train" or "validation",
    or "<run>: train" ... when run names it). The types are set every time: an empty frame, or one with a
    missing value, would otherwise have object columns, which the plot draws as category labels, no lines."""
    frame = pd.DataFrame(metrics.loss_points(), columns=LOSS_COLUMNS).dropna()
    frame = frame.astype({"step": "int64", "loss": "float64", "curve": "str"})
    if run is not None:
        frame["curve"] = run + ": " + frame["curve"]
    return frame
