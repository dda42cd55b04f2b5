"""One module a tab; each has build(studio, demo) that lays the tab out and wires its events."""

from __future__ import annotations

from typing import Any

import gradio as gr


def dropdown(**kwargs: Any) -> gr.Dropdown:
    """A dropdown whose choices are filled at run time (datasets, models and runs change in other tabs and
    sessions). Gradio checks a value against the choices this session last saw, so the server must accept
    others; every handler looks the value up itself and says when it is unknown."""
    return gr.Dropdown(allow_custom_value=True, **kwargs)
