"""build_app() -> gr.Blocks: the studio's tabs (Data, Pretrain, Fine-tune, Compare, Chat, Votes, Models, Inside,
Benchmarks) over one workspace; launch() serves it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
from starlette.middleware import Middleware

from llm.config import DEFAULT_BASE_MODEL
from studio.assets import FrontendAssets
from studio.context import MAX_UPLOAD_BYTES, SAMPLES_DIR, Studio
from studio.inspect_cache import install as keep_inspections
from studio.tabs import (
    STAMP_API,
    bench,
    chat,
    compare,
    data,
    finetune,
    inside,
    models,
    pretrain,
    stop_timers_when_left,
    votes,
)

API_PAGE = "api"  # the page of the endpoints for scripts: http://127.0.0.1:7860/api
API_PAGE_TEXT = """# LLM Studio: the API
The studio's endpoints for scripts (`gradio_client`): **Use via API** at the bottom of this page lists each one,
with its arguments and an example. The Data tab's endpoints are events of the studio's own page (Home), listed
at its bottom."""
ANALYTICS_EVERY = 500  # events between two of Gradio's latency summaries (see launch)
CSS = """
.gradio-container { max-width: 1400px !important; }
#studio-header h1 { margin-bottom: 0; }
#studio-header p { margin-top: 4px; color: var(--body-text-color-subdued); }
.banner { border-left: 4px solid #f5a524; background: rgba(245,165,36,.08); padding: 8px 12px; border-radius: 6px; }
.preview .example { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
  margin-bottom: 8px; white-space: pre-wrap; overflow-wrap: anywhere; font-family: var(--font-mono); font-size: 13px;
  line-height: 1.5; }
.preview .row-no { font-family: var(--font); font-size: 12px; color: var(--body-text-color-subdued); margin-bottom: 4px; }
.preview-legend { font-size: 13px; margin-bottom: 8px; }
.tok-special { display: inline-block; font-family: var(--font-mono); font-size: 11px; padding: 0 4px; margin: 0 2px;
  border-radius: 4px; background: var(--neutral-200); color: var(--neutral-700); }
.trained { background: rgba(34,197,94,.22); border-radius: 3px; }
.tok-special.trained { background: rgba(34,197,94,.45); }
.diff ins { background: rgba(34,197,94,.25); text-decoration: none; border-radius: 3px; }
.diff del { background: rgba(229,72,77,.2); color: #b42318; border-radius: 3px; }
.diff-block { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; margin: 6px 0; }
.diff-head { font-size: 12px; color: var(--body-text-color-subdued); margin-bottom: 4px; }
.diff-body { white-space: pre-wrap; }
.diff-legend { font-size: 12px; }
.run-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.run-progress .bar { height: 100%; background: #4f7cff; transition: width .6s ease; }
.run-progress.done .bar { background: #22c55e; }
.run-progress.failed .bar, .run-progress.interrupted .bar { background: #e5484d; }
.run-progress-text { font-size: 13px; margin-top: 4px; }
.inline-button { align-self: end; margin-bottom: 8px; }
.state-badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  background: var(--neutral-200); color: var(--neutral-700); }
.state-badge.running, .state-badge.starting, .state-badge.queued { background: #dbe4ff; color: #2f4ac0; }
.state-badge.stopping { background: #fff1d6; color: #8a5a00; }
.state-badge.done { background: #dcfce7; color: #166534; }
.state-badge.failed, .state-badge.interrupted { background: #fee2e2; color: #991b1b; }
.state-badge.cancelled { background: var(--neutral-200); color: var(--neutral-600); }
.chart-title { font-size: 13px; font-weight: 600; margin: 2px 0 4px; }
.chart-legend { font-size: 12px; margin-bottom: 4px; color: var(--body-text-color-subdued); }
.chart-key { margin-right: 12px; white-space: nowrap; }
.chart-key i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
.chart-empty { font-size: 13px; color: var(--body-text-color-subdued); padding: 24px 0; }
.chart svg { max-height: 340px; }
.chart svg .grid { stroke: var(--border-color-primary); stroke-width: 1; }
.chart svg .tick { font-size: 11px; fill: var(--body-text-color-subdued); }
.chart svg .axis-title { font-size: 12px; fill: var(--body-text-color-subdued); }
.chart svg .line { fill: none; stroke-width: 2; stroke-linejoin: round; }
.probe-answers { max-height: 260px; overflow-y: auto; border: 1px solid var(--border-color-primary); border-radius: 8px; }
.probe-answers table { width: 100%; table-layout: fixed; border-collapse: collapse; font-size: 13px; margin: 0; }
.probe-answers th, .probe-answers td { padding: 4px 8px; text-align: left; vertical-align: top;
  border-bottom: 1px solid var(--border-color-primary); white-space: pre-wrap; overflow-wrap: anywhere; }
.probe-answers th:first-child { width: 10%; }
.probe-answers th:nth-child(2) { width: 35%; }
.plan { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 4px 12px; }
#chat-log .bubble-wrap { padding-top: 40px; }  /* the "Conversation" label sits over the first message otherwise */
.settings-table td { overflow-wrap: anywhere; }
"""


def theme() -> gr.themes.Theme:
    # System fonts only: the studio runs offline, so nothing is fetched from a font service.
    return gr.themes.Soft(
        primary_hue="indigo",
        neutral_hue="slate",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def build_app(
    workspace: str | Path = "workspace",
    base_model: str | Path = DEFAULT_BASE_MODEL,
    samples_dir: str | Path = SAMPLES_DIR,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    watch_interval: float = 2.0,
) -> gr.Blocks:
    """The studio over one workspace. The job watcher starts here (it also resumes the queue after a restart)."""
    keep_inspections()  # Gradio reads a component class's parameters for every part made and config read
    studio = Studio(workspace, base_model, samples_dir, max_upload_bytes)
    studio.jobs.tick()  # notice runs that ended while no studio was watching
    studio.jobs.watch(watch_interval)
    with gr.Blocks(title="LLM Studio") as demo:
        gr.Markdown(
            "# LLM Studio\nPretrain a small language model on your own text, fine-tune it on your examples, compare "
            "models side by side and look inside them.",
            elem_id="studio-header",
        )
        gr.Navbar(visible=False)  # the one page for people; API_PAGE is for scripts
        missing = studio.base_missing()
        gr.Markdown(f"⚠ {missing}", visible=bool(missing), elem_classes="banner", elem_id="base-missing")
        apis = {}
        # The Fine-tune form as this browser left it (read by that tab). It lives outside the tabs: a tab's
        # components are mounted, and a BrowserState read from localStorage, only when the tab is first shown.
        demo.kept_form = gr.BrowserState({}, storage_key=finetune.FORM_STORAGE_KEY)
        demo.progress_sink = gr.State(None)  # where the page's own events report their progress (tabs.quiet)
        demo.stamps = {}  # tab key -> its stamp function (tabs.when_changed), registered by the tabs' build()
        demo.tab_timers = []  # (tab, timer): a tab's timer, which showing another tab stops
        with gr.Tabs() as tab_strip:
            for tab in (data, pretrain, finetune, compare, chat, votes, models, inside, bench):
                apis |= tab.build(studio, demo)
        stop_timers_when_left(demo, tab_strip)
    # The endpoints for scripts on a page of their own: a page's config holds every part and event of its page,
    # and the browser goes through all of it as the page opens (an endpoint is one part for each argument and
    # result). Programs read the whole app's config (gradio_client), so they see every endpoint.
    with demo.route("API", API_PAGE, show_in_navbar=False):
        gr.Markdown(API_PAGE_TEXT)
        for name, fn in apis.items():
            gr.api(fn, api_name=name)
        # Off the queue: a shown tab's script calls it over plain HTTP (a Gradio event costs the page more).
        gr.api(stamp_api(demo.stamps), api_name=STAMP_API, queue=False, api_visibility="undocumented")
    demo.studio = studio  # for launch() and tests
    return demo


def stamp_api(stamps: dict[str, Callable]) -> Callable:
    def shown_stamp(tab: str, values: list) -> list:
        """The stamp of a tab as one page shows it (its stamp inputs' values): [a digest of what the tab's fill
        would draw, whether its timer should tick]. Asked for by the page's script when the tab is shown."""
        if tab not in stamps or not isinstance(values, list):
            raise gr.Error(f"No stamp for the tab {tab!r}.")
        return list(stamps[tab](*values))

    return shown_stamp


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: tuple[str, str] | None = None,
    block: bool = True,
):
    """Serve the studio locally (never through a public share link), on port, else on the first free port from
    7860 (Gradio's scan, up to 7959; $GRADIO_SERVER_PORT moves its start). OSError when there is none."""
    studio: Studio = demo.studio
    # Gradio recomputes its per-endpoint latency summary (for its API page) after every event, as a pandas table
    # of up to the last 10,000 events: a timer ticking each second made every event of a long session cost more.
    # Every 500 events is often enough for that page. Read when the queue is made.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(ANALYTICS_EVERY))
    # Every component Gradio makes resolves its upload folder on disk unless it is named: a lazy tab's body makes
    # dozens of components for each page that shows it. Named once here, as Gradio resolves it.
    os.environ.setdefault("GRADIO_TEMP_DIR", get_upload_folder())
    demo.queue(default_concurrency_limit=2)
    # torch takes seconds to import, and the first plan reads and encodes a dataset: do both in the background
    # once the server is up, so the page is served first and the first plan or answer is quick.
    warm_up = threading.Timer(2.0, finetune.warm_up, args=(studio,))
    warm_up.daemon = True
    warm_up.start()
    return demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=False,
        max_file_size=max(studio.max_upload_bytes, studio.max_model_upload_bytes),  # each checked again
        allowed_paths=[str(studio.workspace / "exports"), str(studio.workspace / "compare")],
        theme=theme(),
        css=CSS,
        footer_links=["api", "settings"],
        app_kwargs={"middleware": [Middleware(FrontendAssets)]},
        prevent_thread_lock=not block,
        quiet=not block,
    )
