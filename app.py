"""Start the studio: python app.py [--host 127.0.0.1] [--port 7860] [--workspace ./workspace] [--auth user:pass]"""

from __future__ import annotations

import argparse
import os
import sys

from llm.config import DEFAULT_BASE_MODEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LLM Studio: fine-tune and compare language models in the browser.")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this computer only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--workspace", default="workspace", help="folder for datasets, runs and models (default ./workspace)"
    )
    parser.add_argument(
        "--base-model", default=str(DEFAULT_BASE_MODEL), help="base model folder (default: the shipped one)"
    )
    parser.add_argument("--auth", help="require a login, given as user:password")
    args = parser.parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            parser.error("--auth must look like user:password")
        auth = (user, password)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # runs offline: no telemetry calls

    from studio.app import build_app, launch

    demo = build_app(args.workspace, args.base_model)
    print(f"LLM Studio: workspace {demo.studio.workspace}", flush=True)
    launch(demo, args.host, args.port, auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
