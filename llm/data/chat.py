"""The one chat template, used by fine-tuning, generation and evaluation alike.

A conversation is rendered as token ids:
    <eos> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...
It opens with the end-of-text token, as every document does in pretraining. The role and end tokens are
inserted by id (they are control symbols: no text encodes to them). Training counts the loss only on
assistant text and the <|end|> after it, so the model learns to answer and to stop, not to write prompts.

A model imported from the Hugging Face format (llm/model/hf.py) keeps its own chat template: its tokenizer carries
the Jinja text, which render() fills in as Hugging Face's apply_chat_template does (same ids), finding the
trained-on assistant turns by rendering the conversation's prefixes.

Tool use: a tool's result is a turn of its own (role "tool"), rendered as a user-side turn whose text
starts with "Tool result:" (the tokenizer reserves no tool token, and a new one would change the shipped
model's vocabulary); it is never trained on. A tool call is the assistant's turn (its JSON is the text the
model learns to write), and the tools on offer are part of the system turn (llm.data.tasks does both).

Each text is encoded with a space in front, the way words appear in running text: the tokenizer adds no
such prefix itself, and without it a message's first word becomes rare fragments ("small" -> s, m, all
instead of "▁small") that a fine-tune must learn from scratch (LoRA on datasets/samples/opposites.csv: 88%
exact match without the space, 100% with it). Generated answers therefore begin with a space.
"""

from __future__ import annotations

from llm.data import jinja_sandbox
from llm.data.tokenizer import CHAT_TOKENS, Tokenizer, TokenizerError, from_files

ROLES = ("system", "user", "assistant", "tool")
TOOL_RESULT = "Tool result:"  # how a tool's result begins: it is read as a user-side turn
TURN_TOKEN = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "tool": "<|user|>"}


class ChatTemplateError(TokenizerError):
    """An imported chat template cannot render a conversation."""


def render(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Messages [{"role", "content"}] -> (token ids, trained-on mask of the same length)."""
    if tokenizer.chat_template:
        return render_with_template(tokenizer, messages)
    ids, mask = [tokenizer.eos_id], [False]
    end = tokenizer.special["<|end|>"]
    for message in messages:
        role = message["role"]
        assert role in ROLES, f"unknown role {role!r}"
        text = f"{TOOL_RESULT} {message['content']}" if role == "tool" else message["content"]
        body = tokenizer.encode(" " + text) + [end]
        trained = role == "assistant"
        ids += [tokenizer.special[TURN_TOKEN[role]]] + body
        mask += [False] + [trained] * len(body)
    return ids, mask


def prompt_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The ids that ask the model for the next assistant turn."""
    if tokenizer.chat_template:
        return tokenizer.encode_special(template_text(tokenizer, messages, add_generation_prompt=True))
    ids, _ = render(tokenizer, messages)
    return ids + [tokenizer.special["<|assistant|>"]]


def user_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-question conversation, with an optional system prompt."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Where an answer ends. Under an imported chat template, at EOS (its turns end with it). Under ours, at
    <|end|>, or at <eos> for a model that never learned <|end|> (a base model writes <eos> where a story
    ends). The one rule for chat, comparisons and task scoring alike."""
    if tokenizer.chat_template:
        return (tokenizer.eos_id,)
    return (tokenizer.special["<|end|>"], tokenizer.eos_id)


def jinja_template(tokenizer: Tokenizer) -> str:
    """The chat template as Jinja, for a model's Hugging Face or GGUF export: an imported model's own, or ours
    written out (<eos> then, per message, <|role|> " " content <|end|>)."""
    if tokenizer.chat_template:
        return tokenizer.chat_template
    roles = "['" + "', '".join(("system", "user", "assistant")) + "']"
    return (
        f"{tokenizer.id_to_piece(tokenizer.eos_id)}"
        "{% for message in messages %}"
        f"{{% if message['role'] not in {roles} %}}"
        "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
        "{{ '<|' + message['role'] + '|> ' + message['content'] + '<|end|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )


def as_ours(tokenizer: Tokenizer) -> Tokenizer:
    """A tokenizer of ours back from an export (our chat tokens, our template written in Jinja) without that
    template, so that this module renders it itself (the same ids; our start token; our trained-on rule)."""
    if not tokenizer.chat_template or len(tokenizer.special) < len(CHAT_TOKENS):
        return tokenizer
    plain = from_files(tokenizer.vocabulary_files(), tokenizer.source)
    return plain if tokenizer.chat_template == jinja_template(plain) else tokenizer


# --- imported chat templates (Jinja, rendered as transformers renders them, in a bounded sandbox) ---


def template_text(tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it (control tokens as their text, e.g. <s>)."""
    assert tokenizer.chat_template, "the tokenizer has no chat template"
    piece = tokenizer.id_to_piece
    try:
        return jinja_sandbox.render(
            tokenizer.chat_template,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=piece(tokenizer.bos_id) if tokenizer.bos_id >= 0 else "",
            eos_token=piece(tokenizer.eos_id) if tokenizer.eos_id >= 0 else "",
        )
    except jinja_sandbox.TemplateLimitError as e:
        raise ChatTemplateError(f"{tokenizer.source}: the chat template is refused: {e}") from None
    except Exception as e:  # whatever the template's own code raises (its raise_exception, a type error, ...)
        raise ChatTemplateError(
            f"{tokenizer.source}: the chat template cannot render this conversation: {type(e).__name__}: {e}"
        ) from None


def render_with_template(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """(ids, mask) under the tokenizer's chat template. An assistant turn's tokens are those between the
    conversation before it (with the generation prompt) and the conversation through it."""
    ids = tokenizer.encode_special(template_text(tokenizer, messages))
    mask = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.encode_special(template_text(tokenizer, messages[:i], add_generation_prompt=True))
        through = tokenizer.encode_special(template_text(tokenizer, messages[: i + 1]))
        if ids[: len(through)] != through or through[: len(before)] != before:
            raise ChatTemplateError(
                f"{tokenizer.source}: the chat template does not render the start of a conversation as the start "
                f"of the whole (message {i}), so its assistant turns cannot be found"
            )
        mask[len(before) : len(through)] = [True] * (len(through) - len(before))
    return ids, mask
