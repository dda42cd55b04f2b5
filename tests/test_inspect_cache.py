"""studio.inspect_cache: Gradio's parameter look-ups kept per function give exactly what inspect gives."""

from __future__ import annotations

import gc
import inspect

import gradio as gr
import gradio.blocks
import gradio.component_meta
import pandas as pd

from studio.inspect_cache import SHARED, CachedInspect, install


def made_parts() -> list[dict]:
    """The configs of parts of every kind the studio makes, with the update forms it uses, ids left out."""
    with gr.Blocks() as demo:
        with gr.Row(), gr.Column(), gr.Accordion("More", open=False):
            gr.Number(value=3.7, precision=0, minimum=1, label="n")
            gr.Dropdown(choices=[("One", "1"), "2"], value="1", allow_custom_value=False)
            gr.Markdown("**hi**", sanitize_html=False, latex_delimiters=[])
            gr.Textbox("x", lines=3, visible="hidden")
            gr.File(file_types=[".csv"], height=120)
            gr.Dataframe(value=pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), interactive=False, wrap=True)
            gr.Radio(["auto", "pairs"], value="pairs")
            gr.CheckboxGroup(["a", "b"], value=["b"])
            gr.Checkbox(True, visible=False)
            gr.Slider(0, 10, value=4, step=2)
            gr.Button("Go", variant="stop")
            gr.HTML("<b>x</b>")
            gr.BrowserState({}, storage_key="k", secret="s")
            gr.State(None)
            gr.Timer(2.0, active=False)
    configs = [block.get_config() for block in demo.blocks.values()]
    updates = [gr.Dropdown(choices=["a", "b"], value="b").get_config(), gr.Number(value=2).get_config()]
    return [{k: v for k, v in c.items() if k not in ("_id", "id", "key")} for c in configs + updates]


def test_parts_made_with_kept_look_ups_are_the_parts_made_without(monkeypatch) -> None:
    for module in (gradio.blocks, gradio.component_meta):
        monkeypatch.setattr(module, "inspect", inspect)
    plain = made_parts()
    install()
    assert gradio.blocks.inspect is SHARED and gradio.component_meta.inspect is SHARED
    assert made_parts() == plain
    install()  # a second studio in the same process: still the one cache
    assert gradio.component_meta.inspect is SHARED


def test_look_ups_are_inspects_own_kept_per_function_and_weakly() -> None:
    kept = CachedInspect()

    def handler(a: int, b: str = "x", *rest: int, c: float = 1.0, **more: str) -> None:
        pass

    assert kept.signature(handler) == inspect.signature(handler)
    assert kept.signature(handler) is kept.signature(handler)
    spec = kept.getfullargspec(handler)
    assert spec == inspect.getfullargspec(handler)
    spec.args.append("changed")
    spec.annotations.clear()
    assert kept.getfullargspec(handler) == inspect.getfullargspec(handler)  # a caller's change is its own
    assert kept.signature(len) == inspect.signature(len)  # not a Python function: inspect's answer, not kept
    assert kept.isgeneratorfunction is inspect.isgeneratorfunction and kept.Parameter is inspect.Parameter
    assert len(kept.signatures) == len(kept.argspecs) == 1
    del handler
    gc.collect()
    assert len(kept.signatures) == len(kept.argspecs) == 0  # a function made for one page goes when it does
