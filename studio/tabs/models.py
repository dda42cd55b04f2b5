"""Models tab: every base model and run, its settings, metrics, loss curve and size; rename, delete, download."""

from __future__ import annotations

import datetime
import html
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pandas as pd

from llm.config import DEFAULT_BASE_MODEL
from llm.errors import LLMError
from llm.run import Metrics, RunDir, read_info, run_of
from studio.context import Studio, StudioError, dir_size, human_size, is_model_dir
from studio.jobs import field_label
from studio.store import new_id
from studio.tabs import (
    EDIT,
    LIGHT,
    bound,
    changed_parts,
    dropdown,
    empty_loss_chart,
    finished_run,
    folded,
    html_part,
    importing,
    keyed,
    laid_out,
    lazy_page,
    loss_chart,
    loss_frame,
    loss_plot,
    made_filled,
    outputs,
    plain,
    quiet,
    stamp_of,
    when_changed,
)

TABLE_COLUMNS = ["name", "kind", "status", "base", "dataset", "steps", "best val loss", "size", "created"]
# What a base model's info.json tells: where an import came from (llm.model.weights.write_imported), how a
# pretrained one was made.
BASE_FACTS = ("imported_from", "license", "name", "format", "gguf_file_type", "chat_template", "params", "step",
              "tokens_seen", "train_loss", "best_val_loss", "wall_seconds", "data")  # fmt: skip
CELL_CHARS = 60  # a cell of the Compare-runs settings table, at most (a long probe list ran off the page)


def _when(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else ""


def run_kind(run: dict[str, Any]) -> str:
    """What made a run, in words: pretraining from text, or tuning a base with LoRA or every weight."""
    if run["command"] == "pretrain":
        return "pretrained from text"
    method = "LoRA" if run["method"] == "lora" else "full"
    return f"{'preference-tuned' if run['command'] == 'prefer' else 'fine-tuned'} ({method})"


def run_data_name(studio: Studio, run: dict[str, Any]) -> str:
    """The dataset (or pretraining text) a run trained on, by name."""
    dataset = studio.store.dataset(run["dataset_id"])
    if dataset is not None:
        return dataset["name"]
    source = run["config"].get("data") or run["config"].get("inputs")
    if isinstance(source, list):
        source = ", ".join(Path(s).name for s in source)
    return Path(source).name if isinstance(source, str) and source else "(deleted)"


def model_rows(studio: Studio) -> list[dict[str, Any]]:
    """One row per base model and per run, newest runs first."""
    rows = []
    for m in studio.store.models():
        path = studio.store.abs(m["path"])
        info = read_info(path)
        rows.append(
            {
                "ref": f"base:{m['id']}",
                "name": m["name"],
                "kind": "imported base model" if info.get("kind") == "imported" else "base model",
                "status": "ready" if is_model_dir(path) else "missing",
                "base": "",
                "dataset": info.get("data", ""),
                "steps": info.get("step"),
                "best val loss": round(info["best_val_loss"], 4) if info.get("best_val_loss") else None,
                "size": human_size(dir_size(path)),
                # The store's time is when this studio first saw the model, not when it was made.
                "created": "shipped" if path == DEFAULT_BASE_MODEL else f"added {_when(m['created'])}",
            }
        )
    labels = dict((ref, label) for label, ref in studio.model_choices())
    for run in studio.store.runs():
        run_dir = studio.store.abs(run["dir"])
        metrics = RunDir(run_dir).read_metrics()
        vals = [e["val_loss"] for e in metrics.evals if e.get("val_loss") is not None]
        rows.append(
            {
                "ref": f"run:{run['id']}",
                "name": run["name"],
                "kind": run_kind(run),
                "status": run["status"],
                "base": labels.get(run["base_id"], run["base_id"]),
                "dataset": run_data_name(studio, run),
                "steps": metrics.step or None,
                "best val loss": round(min(vals), 4) if vals else None,
                "size": human_size(dir_size(run_dir)),
                "created": _when(run["created"]),
            }
        )
    return rows


def facts(info: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Markdown list lines for the info.json fields that are present, numbers rounded for reading."""
    lines = []
    for key in keys:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, int):
            value = f"{value:,}"
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    return lines


def run_settings(config: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The settings a run trained with: the effective ones from its checkpoint (defaults filled in by the
    library), else those chosen in the studio."""
    chosen, tuned, trained = config, info.get("finetune", {}), info.get("train_config", {})
    values = {
        "epochs": tuned.get("epochs", chosen.get("epochs")),
        "steps": trained.get("max_steps", chosen.get("max_steps")),
        "learning rate": trained.get("lr", chosen.get("lr")),
        "batch size": trained.get("batch_size", chosen.get("batch_size")),
    }
    if (tuned.get("method") or chosen.get("method")) == "lora":
        values["LoRA rank"] = tuned.get("lora_rank", chosen.get("lora_rank"))
    return {k: v for k, v in values.items() if v}


def details(studio: Studio, ref: str) -> tuple[str, str]:
    """Markdown with what made the model and how it did, and its loss curve."""
    kind, _, key = ref.partition(":")
    if kind == "base":
        m = studio.store.model(key)
        if m is None:
            return "Unknown model.", empty_loss_chart()
        path = studio.store.abs(m["path"])
        info = read_info(path)
        lines = [f"### {m['name']}", f"- folder: `{path}`", f"- size on disk: {human_size(dir_size(path))}"]
        if not is_model_dir(path):
            lines.append(f"- ⚠ {studio.base_missing()}")
        lines += facts(info, BASE_FACTS)
        run = run_of(path)
        return "\n".join(lines), loss_chart(loss_frame(run.read_metrics())) if run else empty_loss_chart()
    run = studio.store.run(key)
    if run is None:
        return "Unknown run: it may have been deleted.", empty_loss_chart()
    run_dir = RunDir(studio.store.abs(run["dir"]))
    cfg = run["config"]
    info = run_dir.info()  # the newest checkpoint's facts
    metrics = run_dir.read_metrics()
    settings = run_settings(cfg, info)
    lines = [
        f"### {html.escape(run['name'])}",
        f"- status: **{run['status']}** {run['message']}",
        f"- base model: {studio.model_label(run['base_id']) if run['base_id'] else '(none: trained from scratch)'}",
        f"- data: {run_data_name(studio, run)}",
        f"- made by: {run_kind(run)}",
        f"- settings: {', '.join(f'{k} {v}' for k, v in settings.items())}",
        f"- folder: `{run_dir.path}` ({human_size(dir_size(run_dir.path))} on disk)",
        dates_line(run),
    ]
    if metrics.start:
        lines.append(
            f"- parameters: {metrics.start.get('params', 0):,} (trained: {metrics.start.get('trainable', 0):,})"
        )
    lines += facts(info, ("step", "tokens_seen", "train_loss", "best_val_loss", "wall_seconds"))
    return "\n".join(lines), loss_chart(loss_frame(metrics))


def safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def export_zip(studio: Studio, ref: str, hugging_face: bool = False) -> Path:
    """A zip holding a standalone model folder (a LoRA adapter merged into its base), plus a run's metrics
    and log; with hugging_face, the folder is the Hugging Face Llama format (llm.model.hf.export_hf) that
    `transformers` and llama.cpp's converter read."""
    from llm.model.export import export_model

    source = studio.model_dir(ref)
    label = safe_stem(studio.model_label(ref)) + ("-hf" if hugging_face else "")
    exports = studio.workspace / "exports"
    target = exports / f"{label}-{new_id()}.zip"
    with tempfile.TemporaryDirectory(dir=exports) as tmp:
        folder = Path(tmp) / label
        export_model(source, folder, "hf" if hugging_face else "ours")
        if ref.startswith("run:"):
            run = RunDir(source.parent)
            for path in (run.metrics, run.log):
                if path.is_file():
                    shutil.copy2(path, folder / path.name)
        partial = target.with_suffix(".zip.tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.rglob("*")):
                z.write(f, f.relative_to(folder.parent))
        os.replace(partial, target)
    return target


def dates_line(run: dict[str, Any]) -> str:
    """When a run was queued, first started and ended (a cancelled run never started)."""
    if run["started"] is None:
        ended = f", {run['status']}: {_when(run['finished'])}" if run["finished"] else ""
        return f"- queued: {_when(run['created'])}, never started{ended}"
    return f"- started: {_when(run['started'])}, ended: {_when(run['finished']) or '—'}"


def setting_cell(name: str, chosen: Any, effective: dict[str, Any]) -> str:
    """One cell of the Compare-runs settings table: the value the trainer used where the checkpoint records it
    (a batch size of 0 means "from the context" until then), cut to fit a column."""
    value = effective.get(name, chosen)
    if name == "batch_size" and not value:
        value = "auto (from the context)"
    elif name == "probes":
        value = " · ".join(value or []) or "none"
    text = "default" if value is None else str(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def compare_runs(studio: Studio, refs: list[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The loss curves of several runs on one chart (a color for each run's train and validation curves),
    and their settings side by side: one row a setting, one column a run."""
    from studio.tabs.finetune import FORM_FIELDS

    curves, columns = [], {}
    for ref in refs or []:
        run = studio.store.run(ref.partition(":")[2].partition("/")[0])
        if run is None:
            continue
        run_dir = RunDir(studio.store.abs(run["dir"]))
        curves.append(loss_frame(run_dir.read_metrics(), run["name"]))
        info = run_dir.info()
        effective = {**run["config"], **info.get("finetune", {}), **info.get("train_config", {})}
        dataset = studio.store.dataset(run["dataset_id"])
        column = {"dataset": dataset["name"] if dataset else "(deleted)", "status": run["status"]}
        column |= {name: setting_cell(name, run["config"].get(name), effective) for name in FORM_FIELDS}
        columns[run["name"]] = column
    frame = pd.concat(curves, ignore_index=True) if curves else loss_frame(Metrics())
    table = pd.DataFrame(columns).rename_axis("setting").reset_index() if columns else pd.DataFrame(columns=["setting"])
    return frame, table


def export_gguf(studio: Studio, ref: str) -> Path:
    """The model as one GGUF file in fp16 (llm.model.export: a LoRA adapter merged, the tokenizer and chat
    template inside), which llama.cpp runs and `ollama create` takes."""
    from llm.model.export import export_model

    target = studio.workspace / "exports" / f"{safe_stem(studio.model_label(ref))}-{new_id()}.gguf"
    return export_model(studio.model_dir(ref), target, "gguf", "fp16")


def layout(ui: SimpleNamespace, studio: Studio) -> None:
    gr.Markdown(
        "Every base model and fine-tuning run in this workspace. Pick one to see how it was made; import a model "
        "someone else trained below."
    )
    ui.table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="models-table")
    with gr.Row():
        ui.pick = dropdown(label="Model or run", scale=4, elem_id="models-pick")
        ui.refresh = gr.Button("↻ Refresh", scale=0, min_width=140, size="sm", elem_classes="inline-button")
    with gr.Row():
        with gr.Column(scale=3):
            ui.about = gr.Markdown(elem_id="models-about")
        with gr.Column(scale=4):
            ui.curve = loss_plot(elem_id="models-loss")
    with gr.Row():
        ui.new_name = gr.Textbox(label="New name", scale=3, elem_id="models-new-name", **EDIT)
        ui.rename = gr.Button("Rename", scale=1, elem_classes="inline-button", elem_id="models-rename")
        ui.download = gr.Button("Download as zip", scale=1, elem_classes="inline-button")
        ui.download_hf = gr.Button(
            "Hugging Face folder (zip)", scale=1, elem_classes="inline-button", elem_id="models-download-hf"
        )
        ui.download_gguf = gr.Button(
            "GGUF file (fp16)", scale=1, elem_classes="inline-button", elem_id="models-download-gguf"
        )
        ui.delete = gr.Button("Delete…", variant="stop", scale=1, elem_classes="inline-button", elem_id="models-delete")
    with gr.Row(visible=False, elem_id="models-confirm") as ui.confirm_row:
        ui.confirm_text = gr.Markdown(elem_id="models-confirm-text")
        ui.confirm = gr.Button("Yes, delete it", variant="stop", scale=0, elem_id="models-confirm-delete")
        ui.cancel = gr.Button("Cancel", scale=0)
    ui.status = gr.Markdown(elem_id="models-status")
    ui.zip_file = gr.File(label="Zip", interactive=False, visible=False, elem_id="models-zip")
    ui.seen = gr.State(None)  # the signature of what listing() last drew
    ui.doomed = gr.State(None)  # the ref that the open "Yes, delete it" box names
    with folded("Compare runs: loss curves on one chart, settings side by side"):
        ui.compare_pick = dropdown(label="Runs", multiselect=True, elem_id="models-compare-pick")
        ui.compare_curve = html_part(elem_classes="chart-box", elem_id="models-compare-loss")
        ui.compare_table = gr.Dataframe(
            interactive=False, wrap=True, elem_id="models-compare-table", elem_classes="settings-table"
        )
    importing.layout(ui, studio)


# What listing() draws.
SHOWN = ("table", "pick", "about", "curve", "new_name", "compare_pick", "compare_curve", "compare_table", "seen")


def listing_view(studio: Studio, selected: str | None, compared: list[str] | None) -> SimpleNamespace:
    """What listing() draws for the page's pick and runs compared: the model rows, the pick's choices and the
    pick (kept, else the newest finished run, else the first base model), the runs offered for comparison and
    those compared that are still there, and the signature of it all, one entry a part of the tab. A run still
    training is never picked for the user, as in Chat and Compare: its details change at every step, and so
    the tab would draw them again each time it is shown."""
    rows = model_rows(studio)
    refs = [r["ref"] for r in rows]
    runs = [ref for ref in refs if ref.startswith("run:")]
    choices = [(f"{r['name']} — {r['kind']}", r["ref"]) for r in rows]
    value = selected if selected in refs else finished_run(studio, choices) or (refs or [None])[0]
    kept = [ref for ref in compared or [] if ref in runs]
    offered = [(r["name"], r["ref"]) for r in rows if r["ref"] in runs]
    run = studio.store.run(value.partition(":")[2].partition("/")[0]) if value in runs else None
    picked = next((r for r in rows if r["ref"] == value), None)
    signature = {
        "table": json.dumps(rows, default=str),
        "pick": json.dumps([choices, value]),
        # what show() draws: the pick's row, its run's message and files (a training run's change each step)
        "shown": json.dumps([picked, run and run["message"], studio.jobs.file_times(run) if run else ()], default=str),
        "compare_pick": json.dumps([offered, kept]),
    }
    return SimpleNamespace(rows=rows, choices=choices, value=value, offered=offered, kept=kept, signature=signature)


def stamp(studio: Studio, selected: str | None, compared: list[str] | None) -> tuple[str, bool]:
    """The tab's stamp (tabs.when_changed) for the page's pick and runs compared: listing()'s signature."""
    return stamp_of(listing_view(studio, selected, compared).signature), False


def listing(studio: Studio, selected: str | None = None, compared: list[str] | None = None, seen: Any = None):
    """{SHOWN}: the table, the choices (the selected model kept, else the newest finished run), its details, the
    runs offered for comparison and their comparison, and what was drawn. Only the parts that changed since seen are
    sent: drawing the table and a chart is most of a tab switch's cost in the browser. While a run trains, its
    row and, if it is the pick, its details change at every step; the rest stays as it was."""
    view = listing_view(studio, selected, compared)
    drawn = changed_parts(view.signature, seen if isinstance(seen, dict) else None)
    if view.value != selected:  # the page's pick is gone or was none: the new one, with its details
        drawn |= {"pick", "shown"}
    if view.kept != (compared or []):
        drawn.add("compare_pick")
    update: dict[str, Any] = {"seen": view.signature} if drawn else {}
    if "table" in drawn:
        rows = [{k: r[k] for k in TABLE_COLUMNS} for r in view.rows]
        update["table"] = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if "pick" in drawn:
        update["pick"] = gr.Dropdown(choices=view.choices, value=view.value)
    if "shown" in drawn:
        update |= show(studio, view.value)
    if "compare_pick" in drawn:  # with their comparison: the page asks for one on the user's changes only
        update |= {
            "compare_pick": gr.Dropdown(choices=view.offered, value=view.kept, multiselect=True),
            **compare(studio, view.kept),
        }
    return update


def compare(studio: Studio, refs: list[str] | None):
    """{compare_curve, compare_table}: the chosen runs' loss curves on one chart, their settings side by side."""
    frame, table = compare_runs(studio, refs)
    return {"compare_curve": loss_chart(frame, "Loss of each run (train and validation)") if refs else "",
            "compare_table": table}  # fmt: skip


def own_name(studio: Studio, ref: str) -> str:
    """The name a base model or run has in the store (what "New name" starts from), '' if it is gone."""
    kind, _, key = ref.partition(":")
    row = studio.store.model(key) if kind == "base" else studio.store.run(key.partition("/")[0])
    return row["name"] if row else ""


def show(studio: Studio, ref: str | None):
    """{about, curve, new_name}: what made the model, its loss curve, and its name to edit."""
    if not ref:
        return {"about": "", "curve": empty_loss_chart(), "new_name": ""}
    text, chart = details(studio, ref)
    return {"about": text, "curve": chart, "new_name": own_name(studio, ref)}


def rename(studio: Studio, ref: str | None, name: str):
    """{status, *SHOWN}: the model or run renamed (the name checked: unique, printable, short)."""
    try:
        name = studio.rename(ref or "", name)
    except LLMError as e:
        return {"status": f"⚠ {e.worded(field_label(e.field))}", **listing(studio, ref)}
    return {"status": f"Renamed to **{html.escape(name)}**.", **listing(studio, ref)}


def deletable(studio: Studio, ref: str | None) -> tuple[dict | None, str]:
    """(what a ref names: a run, or an imported base model, with its folder as "dir"; '') if it may be
    deleted, else (None, why not)."""
    kind, _, key = (ref or "").partition(":")
    if not ref:
        return None, "⚠ Pick a model first."
    try:
        if kind == "base":
            row = studio.deletable_base(key)
            return row | {"dir": row["path"]}, ""
        run = studio.store.run(key.partition("/")[0])
        if run is None:
            return None, "That run no longer exists."
        studio.check_deletable(run)
    except StudioError as e:
        return None, f"⚠ {html.escape(str(e))}"
    return run, ""


def ask_delete(studio: Studio, ref: str | None):
    """{confirm_row, confirm_text, status, doomed}: the box that asks to confirm, and the ref it names (None
    when nothing may be deleted: then the status says why)."""
    row, why = deletable(studio, ref)
    if row is None:
        return {"confirm_row": gr.Row(visible=False), "confirm_text": "", "status": why, "doomed": None}
    size = human_size(dir_size(studio.store.abs(row["dir"])))
    what = "its files" if ref.startswith("base:") else "its checkpoints"
    return {
        "confirm_row": gr.Row(visible=True),
        "confirm_text": f"Delete **{html.escape(row['name'])}** and {what} ({size})? This cannot be undone.",
        "status": "",
        "doomed": ref,
    }


def delete(studio: Studio, ref: str | None, doomed: str | None = None):
    """Delete the run or imported base model ref names: {confirm_row, status, *SHOWN}. doomed: the ref the
    confirmation box named (the page sends it; None from the API): the pick may have changed since, and then
    nothing is deleted."""
    closed = gr.Row(visible=False)
    if doomed is not None and doomed != ref:
        return {"confirm_row": closed, "status": "⚠ The pick changed after Delete… was pressed: nothing was deleted."}
    row, why = deletable(studio, ref)
    if row is None:
        return {"confirm_row": closed, "status": why, **listing(studio, ref)}
    if ref.startswith("base:"):
        studio.delete_base(row["id"])
    else:
        studio.delete_run(row["id"])
    return {"confirm_row": closed, "status": f"Deleted {html.escape(row['name'])}.", **listing(studio)}


def download(studio: Studio, ref: str | None, hugging_face: bool = False, gguf: bool = False):
    """{zip_file, status}: the model as a zip (a standalone folder: a LoRA adapter merged into its base), or
    with gguf as one GGUF file."""
    if not ref:
        return {"zip_file": gr.File(visible=False), "status": "⚠ Pick a model first."}
    try:
        path = export_gguf(studio, ref) if gguf else export_zip(studio, ref, hugging_face)
    except LLMError as e:
        return {"zip_file": gr.File(visible=False), "status": f"⚠ {e}"}
    note = f"{'GGUF file' if gguf else 'Zip'} ready: {path.name} ({human_size(path.stat().st_size)})."
    return {"zip_file": gr.File(value=str(path), visible=True), "status": note}


def download_hf(studio: Studio, ref: str | None):
    """The model as a Hugging Face folder (zip): transformers loads it; llama.cpp converts it to GGUF (the API:
    /download with hugging_face true)."""
    return download(studio, ref, hugging_face=True)


def download_gguf(studio: Studio, ref: str | None):
    """The model as one GGUF file (fp16) for llama.cpp and Ollama (the API: /download with gguf true)."""
    return download(studio, ref, gguf=True)


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    listed = outputs(ui, *SHOWN)
    # Built listed (built_listed), listed again when shown with its stamp changed: opening a page (on the first
    # tab) costs no listing of every run.
    triggers = [when_changed(demo, tab, "models", [ui.pick, ui.compare_pick], built=True).change, ui.refresh.click]
    gr.on(triggers, keyed(listing, studio, ui), [ui.pick, ui.compare_pick, ui.seen], listed, **quiet(demo))
    # .input: every handler that sets the pick (listing, rename, delete) draws its details itself.
    ui.pick.input(keyed(show, studio, ui), ui.pick, outputs(ui, "about", "curve", "new_name"), **LIGHT)
    compared = outputs(ui, "compare_curve", "compare_table")
    # .input too: listing() draws the comparison of the runs it sets.
    ui.compare_pick.input(keyed(compare, studio, ui), ui.compare_pick, compared, **LIGHT)
    ui.rename.click(keyed(rename, studio, ui), [ui.pick, ui.new_name], [ui.status, *listed], **LIGHT)
    asked = outputs(ui, "confirm_row", "confirm_text", "status", "doomed")
    ui.delete.click(keyed(ask_delete, studio, ui), ui.pick, asked, **LIGHT)
    # The box names one run: the user's new pick closes it (.input: a listing that sets the pick sends no
    # event), and delete() checks the pick against it whatever set the pick.
    for event in (ui.cancel.click, ui.pick.input):
        event(lambda: (gr.Row(visible=False), None), None, [ui.confirm_row, ui.doomed], **LIGHT)
    deleted = [ui.confirm_row, ui.status, *listed]
    ui.confirm.click(keyed(delete, studio, ui), [ui.pick, ui.doomed], deleted, **LIGHT)
    zipped = outputs(ui, "zip_file", "status")
    ui.download.click(keyed(download, studio, ui), ui.pick, zipped, **LIGHT)
    ui.download_hf.click(keyed(download_hf, studio, ui), ui.pick, zipped, **LIGHT)
    ui.download_gguf.click(keyed(download_gguf, studio, ui), ui.pick, zipped, **LIGHT)
    importing.wire(studio, ui, listing, listed)


def api_functions(studio: Studio) -> dict[str, Callable]:
    """The tab's plain API functions by endpoint name."""

    def api_models() -> list[dict[str, Any]]:
        """Every model and run as plain records (the ref names it in other calls)."""
        return model_rows(studio)

    def loss_curves(refs: list[str]) -> list[dict[str, Any]]:
        """The loss points of several runs (refs "run:<id>"): records with step, loss and curve ("<run name>:
        train" or "<run name>: validation"), as the Models tab draws them on one chart."""
        return compare_runs(studio, refs)[0].to_dict(orient="records")

    def api_rename(ref: str, name: str) -> str:
        """Rename the base model or run ref names (names are unique, printable, at most 80 characters): what
        happened."""
        return rename(studio, ref, name)["status"]

    def api_delete(ref: str) -> str:
        """Delete the run or imported base model ref names (not the studio's own base model, not a run that is
        queued or training, nor a model that another run is built on): what happened."""
        return delete(studio, ref)["status"]

    def api_download(ref: str, hugging_face: bool = False, gguf: bool = False) -> dict[str, Any]:
        """The model ref names as a zip (a standalone folder; hugging_face: the Hugging Face format) or, with
        gguf, one GGUF file (fp16): {status, zip_file (its path on the server, or None)}."""
        return plain(download(studio, ref, hugging_face, gguf))

    return {"models": api_models, "loss_curves": loss_curves, "rename": api_rename, "delete": api_delete,
            "download": api_download}  # fmt: skip


def built_listed(studio: Studio, demo: gr.Blocks, tab: gr.Tab) -> None:
    """The body, as a page first builds it, made already listed (tabs.made_filled): the page sends no listing
    for it."""
    ui = laid_out(lambda ui: layout(ui, studio))
    made_filled(ui, lambda: listing(studio))
    wire(studio, demo, tab, ui)


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab (once shown) and wire its events; returns the plain API functions to register by name."""
    demo.stamps["models"] = bound(stamp, studio)
    lazy_page(demo, "7 · Models", "models", lambda tab: built_listed(studio, demo, tab))
    return api_functions(studio) | importing.api_functions(studio)
