"""One module a tab; each has build(studio, demo) that lays the tab out and wires its events."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import secrets
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import cache, partial
from types import SimpleNamespace
from typing import Any, get_type_hints

import gradio as gr
import pandas as pd
from gradio.context import get_blocks_context

from llm.errors import ConfigError
from llm.run import Metrics
from studio.charts import line_chart
from studio.store import FINAL_STATES

LOSS_COLUMNS = ["step", "loss", "curve"]
# Events that only read (tab fills, dropdown changes, the plan, refresh timers): no queue of their own to
# wait in, so four open pages, a running fine-tune or a generation never hold them up. Generation and batch
# scoring keep a concurrency limit.
LIGHT: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": None}
# An input's interactive set, not inferred: Gradio infers it from the events that read a component, except in a
# render (a lazy tab's body, see lazy_page), where such an input was drawn disabled.
EDIT: dict[str, Any] = {"interactive": True}


def quiet(demo: gr.Blocks) -> dict[str, Any]:
    """LIGHT, for an event the page sends on its own (a tab's fill, a timer's tick, a plan redrawn after an edit):
    no progress shown, and the progress reported on the page's one hidden sink (demo.progress_sink), not on the
    event's outputs. Gradio's page keeps a loading state for every part any event has reported progress on and
    updates all of them (a copy of each part's properties) at the start and the end of every event: a fill that
    reported on its dozens of outputs made every later event of the page pay for a pass over most of it."""
    return LIGHT | {"show_progress": "hidden", "show_progress_on": demo.progress_sink}


def bound(handler: Callable, studio: Any) -> Callable:
    """The handler with the studio bound as its first argument, its docstring kept: Gradio describes a
    public endpoint by its function's docstring, and a bare functools.partial's is functools' own."""
    fn = partial(handler, studio)
    fn.__doc__ = handler.__doc__
    return fn


def page(label: str, key: str, layout: Callable[[SimpleNamespace], None]) -> tuple[gr.Tab, SimpleNamespace]:
    """A tab of the studio laid out by layout(ui): the tab, and ui holding its parts by name."""
    ui = SimpleNamespace()
    with gr.Tab(label, id=key) as tab:
        layout(ui)
    return tab, ui


def laid_out(layout: Callable[[SimpleNamespace], None]) -> SimpleNamespace:
    """ui holding the parts layout(ui) lays out, by name."""
    ui = SimpleNamespace()
    layout(ui)
    return ui


def lazy_page(
    demo: gr.Blocks, label: str, key: str, build: Callable[..., None], inputs: tuple[gr.components.Component, ...] = ()
) -> gr.Tab:
    """A tab whose body is built the first time a page shows it, not when the page opens: a page pays (in its
    browser's time, which every component and event of the whole studio costs at opening) only for the tabs it
    shows. build(tab, *values of inputs) lays the body out and wires it, on the server, once a page; its events
    are the page's own (none of them is a public endpoint: the tab's API is plain functions, registered apart).
    inputs: parts outside the tab whose values the body is built with. A part that is filled when the tab is
    shown is filled on on_show(demo, tab)."""
    with gr.Tab(label, id=key) as tab:
        opened = gr.Checkbox(False, visible=False, label="opened (set by the page when the tab is first shown)")

        @gr.render(inputs=[opened, *inputs], triggers=[opened.change], show_progress="hidden")
        def body(first_shown: bool, *values: Any) -> None:
            if first_shown:
                build(tab, *values)

        quiet_render(demo)
    tab.select(None, None, opened, js="() => true")  # the page alone: no server round trip after the first
    return tab


STOP_TIMER_JS = "() => ({__type__: 'update', active: false})"  # a timer's update, made by the page itself
SHOW_JS = "() => ({__type__: 'update', visible: true})"  # a block shown by the page itself


@contextmanager
def folded(label: str, elem_id: str | None = None) -> Iterator[gr.Column]:
    """A closed accordion whose content the page mounts only when the user first opens it: a closed accordion
    drawn by gr.render (as the lazy tabs' bodies are) otherwise mounts its content with the tab, every field of it
    paid for in the browser's time (one built with the page is left unmounted by Gradio itself). The
    content sits in a column drawn hidden, which the page itself shows on the first expand (no server round
    trip). A hidden part still holds its value: events read and set it as they do a shown one."""
    with gr.Accordion(label, open=False, elem_id=elem_id) as accordion:
        with gr.Column(visible=False) as content:
            yield content
    accordion.expand(None, None, content, js=SHOW_JS)


def stop_timers_when_left(demo: gr.Blocks, tabs: gr.Tabs) -> None:
    """Showing a tab stops the timers of the others (demo.tab_timers: (tab, its timer)) in the page: a tick
    sent to a tab behind, only to stop its timer, would cost the page a round trip as the user moves on."""
    every_tab = [t for t in tabs.children if isinstance(t, gr.Tab)]
    for tab, timer in demo.tab_timers:
        for other in every_tab:
            if other is not tab:
                other.select(None, None, timer, js=STOP_TIMER_JS)


def quiet_render(demo: gr.Blocks) -> None:
    """The render just declared reports its progress on demo.progress_sink (see quiet), not on the column
    that holds its body: as that column's loading state, every later event of the page would copy the
    properties of every part of the tab. gr.render takes no show_progress_on, so it is set on the render's
    event."""
    blocks = get_blocks_context()
    render = blocks.renderables[-1]
    event = next(fn for fn in blocks.fns.values() if fn.renderable is render)
    event.show_progress_on = [demo.progress_sink]


def html_part(value: str | None = None, **kwargs: Any) -> gr.Markdown:
    """A part that shows HTML the studio made (every text of a user's in it escaped), and updates of it. It is a
    Markdown part that passes HTML through as it is (no sanitizing, no LaTeX): Gradio's HTML part would show the
    same, but the first one a page mounts costs its main thread far more (benchmarks/README.md). Everything the
    part is sent goes through html_block() first."""
    part = gr.Markdown(html_block(value), sanitize_html=False, latex_delimiters=[], **kwargs)
    markdown = part.postprocess
    part.postprocess = lambda html: markdown(html_block(html))  # Gradio's every value for the part, then Markdown's
    return part


TAG = re.compile(r"<[^>]*>")  # a tag (a text's own "<" and ">" are escaped, and so are they in quoted values)
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")  # an attribute's quoted value


def html_block(html: str | None) -> str | None:
    """HTML as one line, for an html_part. The Markdown renderer takes HTML that begins a line as it is only up to
    the next empty line: the rest of a user's text with an empty line in it would be read as Markdown, and Gradio
    also strips the indentation its lines share. A newline in text or in an attribute's value becomes its
    character reference, which the browser reads back as the same newline; between a tag's attributes there must
    be none."""
    if html is None:
        return None
    assert not any("\n" in QUOTED.sub("", tag) for tag in TAG.findall(html)), "a newline between a tag's attributes"
    return html.replace("\n", "&#10;")


def made_as(part: gr.components.Component, update: Any) -> None:
    """Give part, just made in a render, what update (a handler's value for it: a value, or a component update)
    would give it: the page receives the part drawn as the handler would leave it, and no event is sent to draw
    it. Gradio makes the properties (a dropdown's choices as pairs, a table's value as its data) from the
    constructor's arguments, so a twin is made from the part's arguments and the update's, and its properties
    are taken."""
    given = update.constructor_args if isinstance(update, gr.components.Component) else {"value": update}
    args = part.constructor_args | given
    twin = type(part)(**args, render=False)
    for name in args:
        setattr(part, name, getattr(twin, name))
    if isinstance(part, gr.Markdown) and "value" in given:  # what the part's own postprocess makes (html_part)
        part.value = part.postprocess(given["value"])


def made_filled(ui: SimpleNamespace, view: Callable[[], dict[str, Any]]) -> None:
    """A lazy tab's body, just laid out, made as the fill's answer view() ({part name: update}) leaves it (see
    made_as); the timer is left alone: made outside the body, it is set going by the stamp's answer. The
    updates are components, and a component made while view() runs is made in the render that builds the
    body: Gradio would add each one to the page as a part of its own, so every one is taken off again."""
    blocks = get_blocks_context().blocks
    before = set(blocks)
    shown = view()
    for key in set(blocks) - before:
        blocks[key].unrender()
    for name, update in shown.items():
        if name != "timer":
            made_as(component(ui, name), update)


def on_show(demo: gr.Blocks, tab: gr.Tab) -> list:
    """The triggers of a lazy tab's fill: its body has just been built (the page's load event, inside the render
    that builds it), and each later time the tab is shown. A tab whose fill can say cheaply what it would draw
    is filled on when_changed() instead."""
    return [demo.load, tab.select]


STAMP_API = "shown_stamp"  # the plain endpoint a shown tab's script asks for its stamp (see when_changed)
STAMP_LABEL = "stamp (the tab's last stamp, set by the page)"  # the hidden textbox that holds it
# The session every stamp call names. Gradio answers a plain call that names no session with a session state made
# afresh (a copy of the config of every part of the studio); named, one is made once and kept. It holds nothing: a
# stamp reads only the workspace.
STAMP_SESSION = "studio-stamps"


def stamp_script(key: str, timer: bool) -> str:
    """The script that asks for tab key's stamp: it posts the values of the tab's stamp inputs to STAMP_API by a
    plain HTTP call (a Gradio event would cost the page a pass over its state and the server a queue slot) and
    returns the stamp and, with a timer, the timer's update. No answer gives a stamp never seen: the tab is
    filled afresh."""
    answer = "[stamp, {__type__: 'update', active: ticking}]" if timer else "stamp"
    failed = "[String(Date.now()), {__type__: 'update'}]" if timer else "String(Date.now())"
    return f"""async (...values) => {{
  const root = (window.gradio_config && window.gradio_config.root) || '';
  try {{
    const response = await fetch(root + '/gradio_api/run/{STAMP_API}', {{method: 'POST',
      headers: {{'Content-Type': 'application/json'}},
      body: JSON.stringify({{data: [{key!r}, values], session_hash: {STAMP_SESSION!r}}})}});
    const [stamp, ticking] = (await response.json()).data[0];
    return {answer};
  }} catch (e) {{
    return {failed};
  }}
}}"""


def when_changed(
    demo: gr.Blocks, tab: gr.Tab, key: str, inputs: list, built: bool, timer: gr.Timer | None = None
) -> gr.Textbox:
    """The hidden stamp of a tab, whose .change is the trigger of the tab's fill that a page sends only when what
    the fill draws has changed: when the tab is shown (and, built: when a lazy tab's body has just been built) a
    script asks the server for the tab's stamp, demo.stamps[key](*values of inputs): (a digest of what the fill
    would draw for them, whether the tab's timer should tick), and the fill follows only if the stamp differs
    from the last one this page got. An unchanged tab costs its page no Gradio event. A fill that sets the
    stamp to "" has the tab filled afresh when it is next shown. timer: set going, or not, by the stamp's
    answer (a run that works). built: a lazy tab's body, built already filled (made_filled): the stamp starts
    as the stamp of what it shows, so the page sends no fill for it."""
    assert key in demo.stamps, f"no stamp function for the {key} tab"
    if built:  # in the render that builds the tab's body, its parts already holding what the fill would send
        drawn, _ = demo.stamps[key](*(part.value for part in inputs))
        stamp = gr.Textbox(drawn, visible=False, label=STAMP_LABEL)
    else:
        with tab:  # in the tab (a Tabs block may hold only tabs)
            stamp = gr.Textbox(visible=False, label=STAMP_LABEL)
    outs = [stamp, timer] if timer is not None else [stamp]
    script = stamp_script(key, timer is not None)
    for trigger in [tab.select, demo.load] if built else [tab.select]:
        trigger(None, inputs, outs, js=script)
    return stamp


def changed_parts(signature: dict[str, Any], seen: dict[str, Any] | None) -> set[str]:
    """The parts of a view whose signature differs from the one the page drew last (seen; None: it drew none)."""
    return {part for part, sign in signature.items() if seen is None or sign != seen.get(part)}


def stamp_of(*parts: Any) -> str:
    """A short digest of parts (their repr), for a tab's stamp."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def plain(view: dict[str, Any]) -> dict[str, Any]:
    """A handler's {part: value} as plain data for the API: a component update gives its value (if it sets one),
    a table its records; parts that only steer the page (its state, buttons, timers) are left out."""
    out = {}
    for name, value in view.items():
        if isinstance(value, (gr.Button, gr.Timer, gr.Row, gr.State)) or name == "seen":
            continue
        if isinstance(value, list) and value and all(isinstance(v, gr.components.Component) for v in value):
            value = [v.constructor_args.get("value") for v in value]
        elif isinstance(value, gr.components.Component):
            if "value" not in value.constructor_args:
                continue
            value = value.constructor_args["value"]
        out[name] = value.to_dict(orient="records") if isinstance(value, pd.DataFrame) else value
    return out


def page_of(request: gr.Request | None) -> str | None:
    """The page (Gradio's session) an event came from; None for a plain call (the API's functions, tests)."""
    return getattr(request, "session_hash", None)


def with_request(run: Callable, handler: Callable) -> Callable:
    """run(studio, *values, request), a wrapper of handler(studio, *values), given handler's signature and
    docstring with a last parameter request: Gradio passes the page's gr.Request to the parameter whose type
    hint names it (values for the inputs come first)."""
    asked = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request)
    run.__signature__ = inspect.Signature([*inspect.signature(handler).parameters.values(), asked])
    run.__annotations__ = {"request": gr.Request}
    run.__doc__ = handler.__doc__
    return run


class Newest:
    """The newest answer of each kind that each page asked for (key: (page, kind) or a page): an answer begun
    before a newer one of its key ended is stale, and the page must not draw it over the newer one."""

    def __init__(self) -> None:
        self.lock, self.by_key = threading.Lock(), {}

    def begin(self, key: Hashable) -> str:
        token = secrets.token_hex(8)
        with self.lock:
            self.by_key[key] = token
        return token

    def current(self, key: Hashable, token: str) -> bool:
        """Whether no newer answer of key has begun since token's."""
        with self.lock:
            return self.by_key.get(key) == token

    def end(self, key: Hashable, token: str) -> bool:
        """The answer of token is done: whether it is still the newest (then nothing of key is kept)."""
        with self.lock:
            newest = self.by_key.get(key) == token
            if newest:
                del self.by_key[key]
            return newest


NEWEST = Newest()


def newest(handler: Callable, kind: str, stale_parts: tuple[str, ...], when_stale: dict | None = None) -> Callable:
    """handler(studio, *inputs) -> {name: value}, one of the answers of kind (a tab's plan) that a page asks
    for. Several can be on their way at once (a plan asked as the user edits, and another after an upload, or
    the tab's refill), and the one asked first may answer last: an answer that a newer one of its kind from the
    same page began before it ended leaves out stale_parts (and gives when_stale's), so it never draws the
    values it was asked with over the newer one's."""

    def run(studio: Any, *values: Any) -> dict[str, Any]:
        *values, request = values
        key = (page_of(request), kind)
        token = NEWEST.begin(key)
        try:
            answer = handler(studio, *values)
        finally:
            still_newest = NEWEST.end(key, token)
        if still_newest:
            return answer
        return {name: value for name, value in answer.items() if name not in stale_parts} | (when_stale or {})

    return with_request(run, handler)


def keyed(handler: Callable, studio: Any, ui: SimpleNamespace) -> Callable:
    """handler(studio, *inputs) returns (or, a generator, yields) {name: value}, a name being an attribute of ui
    (a component, or a list of components given a list of values), or a key of ui.fields; Gradio gets
    {component: value}, and a component left out stays as it is. Inputs given as a set arrive as one
    {name: value}. Outputs are named, never counted. The endpoint keeps the handler's signature and type hints
    (Gradio passes gr.Progress and gr.Request by them) and docstring."""

    names = {id(c): n for n, c in (vars(ui) | getattr(ui, "fields", {})).items() if isinstance(c, gr.blocks.Block)}

    def by_name(args: tuple) -> tuple:
        """Inputs given as a set reach a handler as one {component: value}: as {name: value}, it is a form."""
        if args and isinstance(args[0], dict) and args[0] and all(id(k) in names for k in args[0]):
            return ({names[id(k)]: v for k, v in args[0].items()}, *args[1:])  # then the request, if asked
        return args

    def components(named: dict[str, Any]) -> dict:
        out = {}
        for name, value in named.items():
            target = component(ui, name)
            out |= dict(zip(target, value, strict=True)) if isinstance(target, list) else {target: value}
        return out or gr.skip()  # an empty dict would read as one output's value

    if inspect.isgeneratorfunction(handler):

        def run(*args: Any) -> Any:
            for named in handler(studio, *by_name(args)):
                yield components(named)

    else:

        def run(*args: Any) -> Any:
            return components(handler(studio, *by_name(args)))

    run.__signature__ = inspect.signature(partial(handler, studio))
    # Gradio passes gr.Request to the parameter whose type hint says so, read from the function's own hints:
    # the handler's, not run's (*args).
    run.__annotations__ = get_type_hints(handler)
    run.__doc__ = handler.__doc__
    return run


def component(ui: SimpleNamespace, name: str) -> Any:
    """The component (or list of components) ui calls name: an attribute, else a form field of ui.fields."""
    return getattr(ui, name) if hasattr(ui, name) else ui.fields[name]


def outputs(ui: SimpleNamespace, *names: str) -> list:
    """The components ui names (a list of components counts as its members), for an event's outputs."""
    found = []
    for name in names:
        target = component(ui, name)
        found += target if isinstance(target, list) else [target]
    return found


def number(value: Any, kind: type, field: str) -> Any:
    """A form field's value as kind (int or float); ConfigError naming the field when it is empty or no number
    (a field cleared by the user reaches the server as None)."""
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"must be a number, got {value!r}", field=field) from None


def json_object(text: str | dict | None, what: str) -> dict[str, Any]:
    """Settings given to the API as one JSON object (or already a dict); ConfigError saying what it must be."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if (text or "").strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"must be a JSON object of {what} fields ({e.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"must be a JSON object of {what} fields, got {type(value).__name__}")
    return value


def dropdown(**kwargs: Any) -> gr.Dropdown:
    """A dropdown whose choices are filled at run time (datasets, models and runs change in other tabs and
    sessions). Gradio checks a value against the choices this session last saw, so the server must accept
    others; every handler looks the value up itself and says when it is unknown."""
    return gr.Dropdown(allow_custom_value=True, **EDIT, **kwargs)


def keep(value: str | None, options: list[tuple[str, str]], fallback: str | None = None) -> str | None:
    """value if it is still offered, else fallback if it is, else the first option (None when none)."""
    keys = [k for _, k in options]
    return value if value in keys else fallback if fallback in keys else (keys[0] if keys else None)


def finished_run(studio: Any, options: list[tuple[str, str]]) -> str | None:
    """The newest run among options (model refs) that has finished training: what a tab picks first. A run
    still training is never picked for the user (early on its checkpoint is from step 1)."""
    finished = {f"run:{r['id']}" for r in studio.store.runs(FINAL_STATES)}
    return next((ref for _, ref in options if ref in finished), None)


def chosen(choices: list[tuple[str, str]], value: str | None) -> gr.Dropdown:
    """A dropdown update: these choices, value chosen. No value when it is None: None set on an empty
    dropdown counts as a change and would fire its .change handlers for nothing."""
    return gr.Dropdown(choices=choices, value=value) if value is not None else gr.Dropdown(choices=choices)


LOSS_COLORS = {"train": "#4f7cff", "validation": "#f5a524"}


def loss_plot(**kwargs: Any) -> gr.Markdown:
    """Where a loss chart goes: fed loss_chart(frame) (an SVG drawn on the server, see studio/charts.py)."""
    return html_part(empty_loss_chart(), elem_classes="chart-box", **kwargs)


@cache
def empty_loss_chart() -> str:
    """The chart of no loss values, drawn once: a lazy tab's body is laid out for each page that shows it."""
    return loss_chart(loss_frame(Metrics()))


def loss_chart(frame: pd.DataFrame, title: str = "Loss (nats per token)") -> str:
    """The loss curves of loss_frame(): one line a curve (train batches, validation, per run when named)."""
    return line_chart(frame, "step", "loss", "curve", title, LOSS_COLORS, empty="No loss values yet.")


def loss_frame(metrics: Metrics, run: str | None = None) -> pd.DataFrame:
    """A run's loss curve for loss_plot: columns step (int), loss (float), curve ("train" or "validation",
    or "<run>: train" ... when run names it). The types are set every time: an empty frame, or one with a
    missing value, would otherwise have object columns, which the plot draws as category labels, no lines."""
    frame = pd.DataFrame(metrics.loss_points(), columns=LOSS_COLUMNS).dropna()
    frame = frame.astype({"step": "int64", "loss": "float64", "curve": "str"})
    if run is not None:
        frame["curve"] = run + ": " + frame["curve"]
    return frame
