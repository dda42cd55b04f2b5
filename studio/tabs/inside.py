"""Inside view: what a model reads and why it answers. For a text (or a prompt and an answer) and one or two
models: the tokens, each token's surprise (and, with two models, which tokens the second made more or less
likely), the next-token choices at a position before and after temperature and top-p, and one layer's
attention as a heatmap.

No ML here: llm.eval.inside computes everything (the same report as `python -m llm inspect --json`); this tab
renders it as HTML, every piece of text escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.errors import LLMError
from studio.context import Studio, StudioError
from studio.jobs import field_label
from studio.tabs import EDIT, LIGHT, dropdown, html_part, keyed, laid_out, lazy_page, number, on_show, outputs, quiet

NO_MODEL = ""  # the second model's "none" choice
BANDS = ("#dbe4ff", "#fde2c4", "#d3f9d8", "#f3d9fa", "#fff3bf")  # token colour bands, in turn
MAX_BITS = 12.0  # surprise at which the colour is fullest
MAX_DELTA = 4.0  # a difference of bits at which the colour is fullest
MAX_ATTENTION = 64  # positions shown in the heatmap
TOKEN_STYLE = "border-radius:3px;padding:1px 0;margin:0 1px 2px 0;display:inline-block;white-space:pre"
BOX = "font-family:var(--font-mono);font-size:13px;line-height:1.9;border:1px solid var(--border-color-primary);"
BOX += "border-radius:8px;padding:8px 10px;margin-bottom:8px"


INTRO = (
    "See what a model reads and why it answers: the **tokens** of a text, how **surprised** the model is "
    "by each (with two models: what the second learned), the **next token** it would pick, and where it "
    "**attends**."
)


def shown(row: dict[str, Any], continued: bool = False) -> str:
    """A token as it reads on the page: its text, a control token's name, newlines and tabs made visible. A
    character spelt by several byte tokens is shown once, by its first (continued: one of the others)."""
    if continued:
        return ""
    text = row["piece"] if row["special"] else row["text"]
    return html.escape(text.replace("\n", "↵").replace("\t", "→"))


def continuations(rows: list[dict[str, Any]]) -> list[bool]:
    """For each row, whether it is a later byte of a character its previous row began (same span)."""
    return [
        i > 0 and not r["special"] and (r["start"], r["end"]) == (rows[i - 1]["start"], rows[i - 1]["end"])
        for i, r in enumerate(rows)
    ]


def token_span(row: dict[str, Any], background: str, extra: str = "", continued: bool = False) -> str:
    title = f"#{row['index']} · id {row['id']} · {row['piece']}{extra}"
    style = f"{TOKEN_STYLE};background:{background}" + (";min-width:6px" if continued else "")
    span = f"<span class='tok' title='{html.escape(title, quote=True)}' style='{style}'>"
    newline = "<br>" if row["text"].endswith("\n") and not continued else ""
    return span + shown(row, continued) + "</span>" + newline


def tokens_html(report: dict[str, Any]) -> str:
    """The text split into its tokens, colour-banded, ids on hover; tokens against characters."""
    rows = report["rows"]
    later = continuations(rows)
    spans = "".join(token_span(r, BANDS[i % len(BANDS)], continued=later[i]) for i, r in enumerate(rows))
    n, chars = report["tokens"], report["characters"]
    head = (
        f"<div class='inside-count'><b>{n:,}</b> tokens for <b>{chars:,}</b> characters "
        f"({chars / max(n, 1):.2f} characters per token). Hover a token for its id.</div>"
    )
    return head + f"<div class='inside-tokens' style='{BOX}'>{spans}</div>"


def heat(value: float, top: float, rgb: str) -> str:
    share = max(0.0, min(1.0, value / top))
    return f"rgba({rgb},{0.08 + 0.8 * share:.2f})"


def surprise_html(report: dict[str, Any]) -> str:
    """Each token coloured by its bits under each model; with two, the difference: green where the second
    model finds the token more likely, red where less."""
    rows, models = report["rows"], report["models"]
    later = continuations(rows)
    parts = []
    for k, summary in enumerate(report["summary"]):
        key = "bits" if k == 0 else "bits_2"
        spans = "".join(
            token_span(
                r,
                heat(r[key], MAX_BITS, "229,72,77") if r["scored"] else "transparent",
                f" · {r[key]:.2f} bits",
                later[i],
            )
            for i, r in enumerate(rows)
        )
        bpb = f", {summary['bits_per_byte']:.3f} bits per byte" if summary["bits_per_byte"] is not None else ""
        parts.append(
            f"<div class='inside-model'><b>{html.escape(models[k])}</b>: mean surprise "
            f"<b>{summary['mean_bits']:.3f}</b> bits per token over {summary['scored_tokens']} tokens{bpb}</div>"
            f"<div class='inside-surprise' style='{BOX}'>{spans}</div>"
        )
    if len(models) == 2:
        spans = []
        for r, continued in zip(rows, later, strict=True):
            delta = r["delta_bits"]
            colour = heat(abs(delta), MAX_DELTA, "34,197,94" if delta < 0 else "229,72,77")
            spans.append(token_span(r, colour if r["scored"] else "transparent", f" · {delta:+.2f} bits", continued))
        parts.append(
            f"<div class='inside-model'><b>Difference</b>: <span style='background:rgba(34,197,94,.5)'>green</span>"
            f" tokens {html.escape(models[1])} finds more likely than {html.escape(models[0])}, "
            f"<span style='background:rgba(229,72,77,.5)'>red</span> less likely (hover for the bits)</div>"
            f"<div class='inside-delta' style='{BOX}'>{''.join(spans)}</div>"
        )
    legend = (
        "<div style='font-size:12px'>Surprise: −log₂ p(token | the tokens before it); darker is more surprising.</div>"
    )
    return legend + "".join(parts)


def candidate_text(candidate: dict[str, Any]) -> str:
    """A next-token choice as a cell: its text, or, for a token with no text of its own (a control token such as
    <|end|>, one byte of a character), its name as a badge."""
    text = candidate["text"]
    if not text or "\ufffd" in text:
        return f"<span class='tok-special'>{html.escape(candidate['piece'])}</span>"
    return f"<code>{html.escape(repr(text)[1:-1])}</code>"


def next_token_html(report: dict[str, Any]) -> str:
    """Per model: the top next tokens with their probability before and after temperature and top-p."""
    views = report.get("next_token") or []
    parts = []
    for view in views:
        rows = "".join(
            f"<tr><td>{c['rank']}</td><td>{candidate_text(c)}</td>"
            f"<td style='min-width:160px'><div style='background:#4f7cff;height:10px;width:{100 * c['probability']:.1f}%'>"
            f"</div>{c['probability']:.4f}</td><td>{c['sampled_probability']:.4f}</td></tr>"
            for c in view["candidates"]
        )
        actual = view["actual"]
        after = (
            f"<div>The text goes on with <code>{html.escape(repr(actual['piece'])[1:-1])}</code>: rank "
            f"{actual['rank']}, p {actual['probability']:.4f}</div>"
            if actual
            else ""
        )
        parts.append(
            f"<div class='inside-next'><b>{html.escape(view['model'])}</b> after token #{view['position']} "
            f"<code>{html.escape(repr(view['after'])[1:-1])}</code> (temperature {view['temperature']:g}, top-p "
            f"{view['top_p']:g}: {view['kept']:,} tokens can be drawn)<table><tr><th>rank</th><th>token</th>"
            f"<th>p</th><th>p after temperature and top-p</th></tr>{rows}</table>{after}</div>"
        )
    return "".join(parts)


def attention_html(views: list[dict[str, Any]]) -> str:
    """Heatmaps: rows are the tokens that look (queries), columns the tokens they look at (keys)."""
    parts = []
    for view in views:
        if "error" in view:
            parts.append(f"<div class='inside-attention'>⚠ {html.escape(view['error'])}</div>")
            continue
        labels, weights = view["labels"][:MAX_ATTENTION], view["weights"][:MAX_ATTENTION]
        cut = len(view["labels"]) > MAX_ATTENTION
        label = [html.escape(t.replace("\n", "↵")) for t in labels]
        cell = "width:14px;height:14px;padding:0;border:0"
        header = "".join(
            f"<th style='writing-mode:vertical-rl;font-weight:normal;font-size:11px'>{t}</th>" for t in label
        )
        body = "".join(
            f"<tr><th style='text-align:right;font-weight:normal;font-size:11px;white-space:pre'>{label[q]}</th>"
            + "".join(
                f"<td title='{label[q]} → {label[k]}: {w:.2f}' style='{cell};background:rgba(79,124,255,{w:.2f})'></td>"
                for k, w in enumerate(row[: len(labels)])
            )
            + "</tr>"
            for q, row in enumerate(weights)
        )
        head = "mean over heads" if view["head"] is None else f"head {view['head']}"
        note = f" (the first {MAX_ATTENTION} positions)" if cut else ""
        parts.append(
            f"<div class='inside-attention'><b>{html.escape(view['model'])}</b>: layer {view['layer']}, {head}"
            f"{note}. Each row is a token; its colours show where it looks (a row sums to 1).<div "
            f"style='overflow:auto'><table style='border-collapse:collapse'><tr><th></th>{header}</tr>{body}"
            "</table></div></div>"
        )
    return "".join(parts)


def choices(studio: Studio, a: str | None, b: str | None) -> dict[str, gr.Dropdown]:
    """{model_a, model_b}: every model, the ones picked kept (else the first, and none for the second)."""
    models = studio.model_choices()
    keys = [k for _, k in models]
    return {
        "model_a": gr.Dropdown(choices=models, value=a if a in keys else (keys[0] if keys else None)),
        "model_b": gr.Dropdown(choices=[("(none)", NO_MODEL), *models], value=b if b in keys else NO_MODEL),
    }


NUMBERS = {"position": int, "top_k": int, "temperature": float, "top_p": float, "layer": int, "head": int}


def inspect(studio: Studio, refs: list[str], mode: str, text: str, prompt: str, answer: str, **values: Any):
    """llm.eval.inside's report for one or two loaded models (cached by the studio), with the attention of each
    model or what keeps it from being shown. values: NUMBERS (head -1: the mean over heads), which the library
    checks, naming the field."""
    from llm.eval import inside as lib

    if not refs:
        raise StudioError("Choose a model.")
    n = {name: number(values[name], kind, name) for name, kind in NUMBERS.items()}
    loaded = [lib.Loaded(studio.model_label(ref), *studio.load(ref)[:2]) for ref in refs]
    if len(loaded) == 2 and not loaded[0].tokenizer.same_vocabulary(loaded[1].tokenizer):
        raise StudioError(
            f"{loaded[0].name} and {loaded[1].name} use different tokenizers, so their tokens cannot be "
            "compared one by one: choose a model and one trained from it."
        )
    if mode == "chat":
        tokens = lib.tokenize(loaded[0].tokenizer, prompt=prompt or None, answer=answer or None)
    else:
        tokens = lib.tokenize(loaded[0].tokenizer, text=text or "")
    report = lib.report(loaded, tokens, n["position"], top_k=n["top_k"], temperature=n["temperature"], top_p=n["top_p"])
    views = []
    for m in loaded:
        try:
            views.append(
                {"model": m.name, **lib.attention(m.model, tokens, n["layer"], n["head"] if n["head"] >= 0 else None)}
            )
        except LLMError as e:
            views.append({"model": m.name, "error": e.worded(field_label(e.field))})
    report["attention"] = views
    return report


def look(studio: Studio, a: str | None, b: str | None, mode: str, text: str, prompt: str, answer: str, *numbers: Any):
    """{status, tokens_view, surprise_view, next_view, attention_view} for the chosen models and text; numbers:
    NUMBERS' values in their order."""
    try:
        asked = dict(zip(NUMBERS, numbers, strict=True))
        report = inspect(studio, [r for r in (a, b) if r], mode, text, prompt, answer, **asked)
    except LLMError as e:
        return {"status": f"⚠ {e.worded(field_label(e.field))}"}
    return {
        "status": f"{len(report['models'])} model(s) · {report['tokens']} tokens",
        "tokens_view": tokens_html(report),
        "surprise_view": surprise_html(report),
        "next_view": next_token_html(report),
        "attention_view": attention_html(report["attention"]),
    }


def layout(ui: SimpleNamespace) -> None:
    gr.Markdown(INTRO)
    with gr.Row():
        ui.model_a = dropdown(label="Model", elem_id="in-model-a")
        ui.model_b = dropdown(label="Second model (optional: compare token by token)", elem_id="in-model-b")
    ui.mode = gr.Radio([("A text", "text"), ("A prompt and an answer", "chat")], value="text", label="Read", **EDIT)
    ui.text = gr.Textbox(label="Text", lines=3, value="Once upon a time, there was a girl.", elem_id="in-text", **EDIT)
    with gr.Row(visible=False) as ui.chat_row:
        ui.prompt = gr.Textbox(label="Prompt", lines=2, elem_id="in-prompt", **EDIT)
        ui.answer = gr.Textbox(label="Answer", lines=2, elem_id="in-answer", **EDIT)
    with gr.Row():
        # No Gradio bounds: a value out of range gets the library's message naming the field, not a bare "Error".
        ui.position = gr.Number(value=-1, precision=0, label="Next token after token # (-1: the last)", **EDIT)
        ui.top_k = gr.Number(value=10, precision=0, label="Top k", **EDIT)
        ui.temperature = gr.Number(value=0.8, label="Temperature", **EDIT)
        ui.top_p = gr.Number(value=0.95, label="Top-p", **EDIT)
        ui.layer = gr.Number(value=0, precision=0, label="Attention layer", **EDIT)
        ui.head = gr.Number(value=-1, precision=0, label="Head (-1: mean of all)", **EDIT)
    ui.go = gr.Button("Look inside", variant="primary", elem_id="in-go")
    ui.status = gr.Markdown(elem_id="in-status")
    with gr.Tabs():
        with gr.Tab("Tokens"):
            ui.tokens_view = html_part(elem_id="in-tokens")
        with gr.Tab("Surprise"):
            ui.surprise_view = html_part(elem_id="in-surprise")
        with gr.Tab("Next token"):
            ui.next_view = html_part(elem_id="in-next")
        with gr.Tab("Attention"):
            ui.attention_view = html_part(elem_id="in-attention")


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    picked = [ui.model_a, ui.model_b]
    gr.on(on_show(demo, tab), keyed(choices, studio, ui), picked, picked, **quiet(demo))
    ui.mode.change(
        lambda m: (gr.Textbox(visible=m == "text"), gr.Row(visible=m == "chat")),
        ui.mode,
        [ui.text, ui.chat_row],
        api_visibility="private",
    )
    inputs = [*picked, ui.mode, ui.text, ui.prompt, ui.answer, *outputs(ui, *NUMBERS)]
    views = outputs(ui, "status", "tokens_view", "surprise_view", "next_view", "attention_view")
    ui.go.click(keyed(look, studio, ui), inputs, views, **LIGHT)


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name."""
    lazy_page(demo, "8 · Inside", "inside", lambda tab: wire(studio, demo, tab, laid_out(layout)))

    def api_inspect(
        model: str,
        text: str = "",
        second_model: str = "",
        prompt: str = "",
        answer: str = "",
        position: int = -1,
        top_k: int = 10,
        temperature: float = 1.0,
        top_p: float = 1.0,
        layer: int = 0,
        head: int = -1,
    ) -> dict[str, Any]:
        """The Inside view's data as JSON (llm.eval.inside.report): tokens with their bits under each model
        (and delta_bits with two), next-token choices after `position`, and one layer's attention. Models are
        refs ("base:base", "run:<id>"); a text, or a prompt and an answer."""
        try:
            refs = [r for r in (model, second_model) if r]
            mode_value = "chat" if prompt or answer else "text"
            numbers = dict(position=position, top_k=top_k, temperature=temperature, top_p=top_p, layer=layer, head=head)
            return inspect(studio, refs, mode_value, text, prompt, answer, **numbers)
        except LLMError as e:
            raise gr.Error(e.worded(field_label(e.field))) from None

    return {"inspect": api_inspect}
