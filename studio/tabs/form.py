"""The Fine-tune form as data: its fields are FinetuneConfig's (label, help text, default), and what it holds
becomes settings, {field: value}, that FinetuneConfig checks (llm.config.from_dict: every key known, every value
of its type, every range). The form, the API (/plan, /start: one JSON object) and the presets all pass
settings; the studio alone chooses the base model and the dataset with its format and columns."""

from __future__ import annotations

import dataclasses
import typing
from functools import cache
from typing import Any

import gradio as gr

from llm.config import ALL_PROJECTIONS, EARLY_STOP_METRICS, OVERFLOW, FinetuneConfig
from llm.errors import ConfigError
from studio.jobs import field_label
from studio.tabs import EDIT, json_object, number

METHOD_CHOICES = [("LoRA: small adapters, fast, little memory", "lora"), ("Full: every weight", "full")]
# The form: FinetuneConfig fields, the first always in view, the others under "Advanced settings".
BASIC_FIELDS = ("method", "epochs", "max_steps", "lr", "batch_size", "lora_rank", "probes")
ADVANCED_FIELDS = (
    "grad_accum", "warmup_steps", "weight_decay", "lora_alpha", "lora_dropout", "lora_targets",
    "val_fraction", "evals_per_epoch", "max_eval_rows", "early_stop_patience", "early_stop_metric", "seed",
    "overflow", "probe_tokens", "merge",
)  # fmt: skip
FORM_FIELDS = BASIC_FIELDS + ADVANCED_FIELDS
SET_BY_STUDIO = ("base", "data", "format", "mapping", "val_data")  # the model and the dataset, as chosen in the studio
MAX_PROBES = 5


@cache  # asked for each field as a page lays the form out: the class does not change
def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


@cache
def config_hints() -> dict[str, Any]:
    """FinetuneConfig's field types, its annotations evaluated (typing.get_type_hints)."""
    return typing.get_type_hints(FinetuneConfig)


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_component(name: str) -> gr.components.Component:
    """The form's input for a FinetuneConfig field: its label, its help text and its default."""
    f = config_fields()[name]
    default, hint = field_default(f), config_hints()[name]
    common = {"label": field_label(name), "info": f.metadata["help"], "elem_id": f"ft-{name.replace('_', '-')}", **EDIT}
    choices = {"method": METHOD_CHOICES, "overflow": list(OVERFLOW), "early_stop_metric": list(EARLY_STOP_METRICS)}
    if name in choices:
        return gr.Radio(choices[name], value=default, **common)
    if name == "lora_targets":
        return gr.CheckboxGroup(list(ALL_PROJECTIONS), value=default, **common)
    if name == "probes":
        common["label"] = "Probe prompts (one a line): answered at every evaluation"
        return gr.Textbox(value="\n".join(default), lines=3, **common)
    if hint is bool:
        return gr.Checkbox(value=default, **common)
    integer = int in typing.get_args(hint) or hint is int
    # No minimum: FinetuneConfig says what a value must be, naming the field (Gradio's own check would not).
    return gr.Number(value=default, precision=0 if integer else None, **common)


def form_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The form's values (FORM_FIELDS by name; others are ignored) as settings. An empty value is left out
    (the library's default applies, FinetuneConfig being the one place the defaults live); so is a learning
    rate of 0 (its default depends on the method). ConfigError naming the field for a value that is no number."""
    hints = config_hints()
    settings: dict[str, Any] = {}
    for name in FORM_FIELDS:
        value = values.get(name)
        if value is None or value == "" or (name == "lr" and not value):
            continue
        if name == "probes":
            settings[name] = [line.strip() for line in str(value).splitlines() if line.strip()][:MAX_PROBES]
            continue
        kind = {int: int, int | None: int, float: float, float | None: float}.get(hints[name])
        settings[name] = number(value, kind, name) if kind else value
    return settings


def form_values(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings (a run's config, a preset) as the form's values by field: a field not given shows its default."""
    fields = config_fields()
    values = {name: settings.get(name, field_default(fields[name])) for name in FORM_FIELDS}
    return values | {"probes": "\n".join(values["probes"])}


def beyond_form(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the form has no field for (a preset saved through the API may hold any): they ride along."""
    return {k: v for k, v in settings.items() if k not in FORM_FIELDS and k not in SET_BY_STUDIO}


def checked(settings: dict[str, Any]) -> dict[str, Any]:
    """settings if FinetuneConfig takes them (every key a field the studio leaves to the user, every value of
    its type and range); ConfigError naming the field otherwise."""
    owned = sorted(set(settings) & set(SET_BY_STUDIO))
    if owned:
        raise ConfigError(f"are chosen in the studio (the base model and the dataset), not in the settings: {owned}")
    FinetuneConfig.from_dict(settings)
    return settings


def parse_settings(text: str | dict | None) -> dict[str, Any]:
    """Settings given as one JSON object (the API's, a preset's), checked (see checked()); ConfigError if not."""
    return checked(json_object(text, "FinetuneConfig"))
