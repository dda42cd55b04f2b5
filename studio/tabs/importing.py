"""Models tab, "Import a model": a .gguf file or a zipped Hugging Face folder (uploaded, or a path on this
machine), or a hub id; what it will need before it starts, its progress while it runs (studio.imports does the
work in a child process); afterwards it is a base model in every tab."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.errors import LLMError
from studio.context import Studio, upload_limit
from studio.imports import MODEL_SUFFIXES, needs_text
from studio.jobs import field_label
from studio.tabs import EDIT, LIGHT, folded, keyed, outputs

POLL_SECONDS = 1.0


def layout(ui: SimpleNamespace, studio: Studio) -> None:
    with folded("Import a model: a GGUF file (Ollama, LM Studio, llama.cpp) or a Hugging Face folder", "import-box"):
        gr.Markdown(
            "A Llama-family model someone else trained (SmolLM2, TinyLlama, Llama 3 ...): upload a `.gguf` file or "
            "a zipped Hugging Face folder, or give its path on this machine (a large file need not be uploaded), "
            "or a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` when this machine is online. It keeps its "
            "own tokenizer and chat template, and becomes a base model in every tab."
        )
        with gr.Row(equal_height=True):
            ui.import_file = gr.File(
                label=f"Upload a .gguf or .zip (up to {upload_limit(studio.max_model_upload_bytes)})",
                file_types=list(MODEL_SUFFIXES),
                scale=2,
                height=120,
                interactive=True,
                elem_id="import-file",
            )
            with gr.Column(scale=3):
                ui.import_path = gr.Textbox(
                    label="…or a path on this machine, or a hub id", elem_id="import-path", **EDIT
                )
                ui.import_name = gr.Textbox(label="Name (default: from the file)", elem_id="import-name", **EDIT)
        ui.import_needs = gr.Markdown(elem_id="import-needs")
        ui.import_button = gr.Button("Import", variant="primary", elem_id="import-start")
        ui.import_status = gr.Markdown(elem_id="import-status")


def source_of(upload: Any, path: str | None) -> str:
    """The source to import: the uploaded file, else the path or hub id typed."""
    return str(upload) if upload else (path or "").strip()


def needs(studio: Studio, upload: Any, path: str | None):
    """{import_needs}: what importing the chosen source will take, or what is wrong with it."""
    source = source_of(upload, path)
    return {"import_needs": needs_text(source) if source else ""}


def start(studio: Studio, upload: Any, path: str | None, name: str | None, listing: Callable):
    """Start the import and follow it: yields {import_status} every second while it runs, then the model list
    with the new base model picked."""
    try:
        job = studio.imports.start(source_of(upload, path), name or "")
    except LLMError as e:
        yield {"import_status": f"⚠ {e.worded(field_label(e.field))}"}
        return
    yield {"import_status": job.line(), "import_button": gr.Button(interactive=False)}
    while job.state == "running":
        time.sleep(POLL_SECONDS)
        yield {"import_status": job.line()}
    done = {"import_status": job.line(), "import_button": gr.Button(interactive=True)}
    yield done | (listing(studio, f"base:{job.key}") if job.state == "done" else {})


def wire(studio: Studio, ui: SimpleNamespace, listing: Callable, listed: list) -> None:
    """listing(studio, selected): the model list's view (models.listing); listed: its output components."""
    for event in (ui.import_file.change, ui.import_path.blur, ui.import_path.submit):  # not each key typed
        event(keyed(needs, studio, ui), [ui.import_file, ui.import_path], ui.import_needs, **LIGHT)
    shown = [*outputs(ui, "import_status", "import_button"), *listed]

    def follow(studio: Studio, upload: Any, path: str | None, name: str | None):
        yield from start(studio, upload, path, name, listing)

    ui.import_button.click(keyed(follow, studio, ui), [ui.import_file, ui.import_path, ui.import_name], shown)


def api_functions(studio: Studio) -> dict[str, Callable]:
    def import_model(source: str, name: str = "") -> dict[str, Any]:
        """Start importing a model (a .gguf file, a Hugging Face folder or .zip of one: a path on the server; or a
        hub id) as a base model called name (default: from the source): {status, key}. Poll /import_status."""
        try:
            job = studio.imports.start(source, name)
        except LLMError as e:
            return {"status": f"⚠ {e.worded(field_label(e.field))}", "key": None}
        return {"status": job.line(), "key": job.key}

    def import_status() -> dict[str, Any]:
        """How the latest import goes: {state (running, done, failed or none), status, ref (its base model's
        ref once done)}."""
        job = studio.imports.current
        if job is None:
            return {"state": "none", "status": "", "ref": None}
        return {"state": job.state, "status": job.line(), "ref": f"base:{job.key}" if job.state == "done" else None}

    def import_needs(source: str) -> str:
        """What importing source (a path on the server, or a hub id) will take, or what is wrong with it."""
        return needs_text(source)

    return {"import": import_model, "import_status": import_status, "import_needs": import_needs}
