"""Chat tab: a multi-turn conversation with any model, with a system prompt and the sampling settings of
Compare, streamed. The conversation is rendered by the one chat template (llm.data.chat) and answered by
llm.model.generate.stream_chat; this tab only keeps the turns."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from llm.config import SamplingConfig
from llm.errors import LLMError
from studio.context import Studio
from studio.tabs import LIGHT, dropdown
from studio.tabs.compare import generation_threads


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
) -> Iterator[tuple[list[dict[str, str]], str]]:
    """(the chat so far, a status line), growing as the answer streams."""
    from llm.model.generate import stream_chat

    history = list(history or [])
    if not ref or not (message or "").strip():
        yield history, "⚠ " + ("Choose a model." if not ref else "Write a message first.")
        return
    messages = conversation(history, system, message)
    shown = [*history, {"role": "user", "content": message.strip()}, {"role": "assistant", "content": ""}]
    try:
        model, tok, _ = studio.load(ref)
        generation_threads(studio)
        for piece in stream_chat(model, tok, messages, SamplingConfig(**sampling)):
            shown[-1]["content"] += piece
            yield shown, "Writing..."
    except LLMError as e:
        yield history, f"⚠ {e}"
        return
    yield shown, f"Answered by {studio.model_label(ref)}."


def build(studio: Studio, demo: gr.Blocks) -> dict[str, Callable]:
    """Lay out the tab and wire its events; returns the plain API functions to register by name."""
    defaults = SamplingConfig()
    with gr.Tab("5 · Chat", id="chat") as tab:
        with gr.Row():
            model = dropdown(label="Model", scale=4, elem_id="chat-model")
            refresh = gr.Button("↻ Refresh list", scale=0, min_width=140, size="sm", elem_classes="inline-button")
        system = gr.Textbox(label="System prompt (optional)", lines=1, elem_id="chat-system")
        chatbot = gr.Chatbot(height=420, label="Conversation", elem_id="chat-log", render_markdown=False)
        with gr.Row():
            message = gr.Textbox(label="Message", placeholder="Say something...", scale=5, elem_id="chat-message")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        with gr.Accordion("Sampling", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 1.5, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top-p")
                max_new = gr.Slider(8, 512, value=128, step=8, label="Max new tokens")
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        with gr.Row():
            clear = gr.Button("New conversation", size="sm")
            status = gr.Markdown(elem_id="chat-status")
        asked = gr.State("")  # the message being answered (inside the tab: a State directly in Tabs breaks them)

    def choices():
        options = studio.model_choices()
        runs = [ref for _, ref in options if ref.startswith("run:")]
        return gr.Dropdown(choices=options, value=(runs or [ref for _, ref in options] or [None])[0])

    def sampling(temp: float, p: float, tokens: float, seed_value: float) -> dict[str, Any]:
        return {
            "temperature": float(temp),
            "top_p": float(p),
            "max_new_tokens": int(tokens),
            "seed": int(seed_value or 0),
        }

    def take(text: str) -> tuple[str, str]:
        """The typed message moves out of the box at once, so typing the next one while this answer streams
        is never overwritten."""
        return "", text

    def respond(ref, system_text, history, text, temp, p, tokens, seed_value):
        yield from reply(studio, ref, system_text, history, text, sampling(temp, p, tokens, seed_value))

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
        *_, (shown, note) = reply(studio, ref, system_text, history, text, sampling(temp, p, tokens, seed_value))
        return {"history": shown, "status": note}

    for event in (tab.select, refresh.click):
        event(choices, None, model, **LIGHT)
    for trigger in (send.click, message.submit):
        trigger(take, message, [message, asked], **LIGHT).then(
            respond, [model, system, chatbot, asked, temperature, top_p, max_new, seed], [chatbot, status],
            api_visibility="private",
        )  # fmt: skip
    clear.click(lambda: ([], ""), None, [chatbot, status], **LIGHT)
    return {"chat": api_chat}
