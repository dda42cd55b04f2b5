"""Chat tab: a multi-turn conversation with any model, with a system prompt and the sampling settings of
Compare, streamed. The conversation is rendered by the one chat template (llm.data.chat) and answered by
llm.model.generate.stream_chat; this tab only keeps the turns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import gradio as gr

from llm.config import SamplingConfig
from llm.errors import LLMError
from studio.context import Studio
from studio.tabs import EDIT, LIGHT, dropdown, finished_run, folded, laid_out, lazy_page, on_show, quiet
from studio.tabs.compare import generation_threads, sampling_sliders


def turn_text(content: Any) -> str:
    """A chat turn's text, whether the Chatbot gives it back as a string or as content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list):
        return "".join(turn_text(block) for block in content)
    return ""


def conversation(history: list[dict[str, Any]], system: str, message: str) -> list[dict[str, str]]:
    """The messages the model answers: the system prompt, the turns so far and the new user message."""
    turns = [
        {"role": m["role"], "content": turn_text(m["content"])} for m in history if m["role"] in ("user", "assistant")
    ]
    head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    return head + turns + [{"role": "user", "content": message.strip()}]


def reply(
    studio: Studio, ref: str | None, system: str, history: list[dict[str, Any]] | None, message: str, sampling: dict
) -> Iterator[tuple[list[dict[str, str]], str, str | None]]:
    """(the chat so far, a status line, the message to give back to the message box), growing as the answer
    streams. A turn that fails gives the message back (the box was emptied when it was sent): nothing typed
    is lost."""
    from llm.model.generate import stream_chat

    history = list(history or [])
    if not ref or not (message or "").strip():
        yield history, "⚠ " + ("Choose a model." if not ref else "Write a message first."), message or None
        return
    messages = conversation(history, system, message)
    shown = [*history, {"role": "user", "content": message.strip()}, {"role": "assistant", "content": ""}]
    try:
        model, tok, _ = studio.load(ref)
        generation_threads(studio)
        for piece in stream_chat(model, tok, messages, SamplingConfig(**sampling)):
            shown[-1]["content"] += piece
            yield shown, "Writing...", None
    except LLMError as e:
        yield history, f"⚠ {e} Your message is back in the box.", message
        return
    yield shown, f"Answered by {studio.model_label(ref)}.", None


def sampling(temp: float, p: float, tokens: float, seed_value: float) -> dict[str, Any]:
    """The sampling sliders' values as SamplingConfig fields."""
    return {"temperature": float(temp), "top_p": float(p), "max_new_tokens": int(tokens), "seed": int(seed_value or 0)}


def model_choices(studio: Studio) -> gr.Dropdown:
    """Every model; the newest finished run chosen (else the first model)."""
    options = studio.model_choices()
    return gr.Dropdown(choices=options, value=finished_run(studio, options) or next((r for _, r in options), None))


def layout(ui: SimpleNamespace) -> None:
    with gr.Row():
        ui.model = dropdown(label="Model", scale=4, elem_id="chat-model")
        ui.refresh = gr.Button("↻ Refresh list", scale=0, min_width=140, size="sm", elem_classes="inline-button")
    ui.system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="chat-system", **EDIT)
    ui.chatbot = gr.Chatbot(height=420, label="Conversation", elem_id="chat-log", render_markdown=False)
    with gr.Row():
        ui.message = gr.Textbox(
            label="Message", placeholder="Say something...", scale=5, elem_id="chat-message", **EDIT
        )
        ui.send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
    with folded("Sampling"):
        ui.temperature, ui.top_p, ui.max_new, ui.seed = sampling_sliders(SamplingConfig().temperature)
    with gr.Row():
        ui.clear = gr.Button("New conversation", size="sm")
        ui.status = gr.Markdown(elem_id="chat-status")
    ui.asked = gr.State("")  # the message being answered (inside the tab: a State directly in Tabs breaks them)


def wire(studio: Studio, demo: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    def take(text: str) -> tuple[str, str]:
        """The typed message moves out of the box at once, so typing the next one while this answer streams
        is never overwritten."""
        return "", text

    def respond(ref, system_text, history, text, temp, p, tokens, seed_value):
        asked = sampling(temp, p, tokens, seed_value)
        for turns, note, unsent in reply(studio, ref, system_text, history, text, asked):
            yield {ui.chatbot: turns, ui.status: note} | ({ui.message: unsent} if unsent else {})

    gr.on([*on_show(demo, tab), ui.refresh.click], lambda: model_choices(studio), None, ui.model, **quiet(demo))
    asked = [ui.model, ui.system, ui.chatbot, ui.asked, ui.temperature, ui.top_p, ui.max_new, ui.seed]
    for trigger in (ui.send.click, ui.message.submit):
        trigger(take, ui.message, [ui.message, ui.asked], **LIGHT).then(
            respond, asked, [ui.chatbot, ui.status, ui.message], api_visibility="private"
        )
    ui.clear.click(lambda: ([], ""), None, [ui.chatbot, ui.status], **LIGHT)


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name."""
    lazy_page(demo, "5 · Chat", "chat", lambda tab: wire(studio, demo, tab, laid_out(layout)))

    def api_chat(
        ref: str,
        system_text: str,
        history: list[dict[str, Any]],
        text: str,
        temp: float = 0.0,
        p: float = 1.0,
        tokens: int = 128,
        seed_value: int = 0,
    ) -> dict[str, Any]:
        """The conversation (history: [{"role", "content"}]) with the model's answer to text added, and a status."""
        *_, (shown, note, _) = reply(studio, ref, system_text, history, text, sampling(temp, p, tokens, seed_value))
        return {"history": shown, "status": note}

    return {"chat": api_chat}
