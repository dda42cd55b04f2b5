"""Start the studio: python app.py [--host 127.0.0.1] [--port N] [--workspace ./workspace] [--auth-file F]

A login (user:password) can come from --auth-file (a file holding it), the LLM_STUDIO_AUTH environment
variable, or --auth (convenient, but visible to anyone who lists this machine's processes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llm.config import DEFAULT_BASE_MODEL

AUTH_VARIABLE = "LLM_STUDIO_AUTH"


def login(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str] | None:
    """(user, password) from --auth-file, --auth or $LLM_STUDIO_AUTH (the first given), or None."""
    if args.auth_file:
        try:
            given, source = Path(args.auth_file).read_text().strip(), "--auth-file"
        except OSError as e:
            parser.error(f"--auth-file {args.auth_file}: {e.strerror}")
    elif args.auth:
        given, source = args.auth, "--auth"
    else:
        given, source = os.environ.get(AUTH_VARIABLE, ""), AUTH_VARIABLE
    if not given:
        return None
    user, sep, password = given.partition(":")
    if not sep or not user or not password:
        parser.error(f"{source} must look like user:password")
    return user, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LLM Studio: fine-tune and compare language models in the browser.")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this computer only)"
    )
    parser.add_argument(
        "--port", type=int, help="port to serve on (default: 7860, else the next free one up to 7959; it is printed)"
    )
    parser.add_argument(
        "--workspace", default="workspace", help="folder for datasets, runs and models (default ./workspace)"
    )
    parser.add_argument(
        "--base-model", default=str(DEFAULT_BASE_MODEL), help="base model folder (default: the shipped one)"
    )
    parser.add_argument("--auth", help="require a login, user:password (visible in the process list)")
    parser.add_argument("--auth-file", help="require a login, user:password read from this file")
    args = parser.parse_args(argv)
    auth = login(parser, args)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # runs offline: no telemetry calls

    from studio.app import build_app, launch

    demo = build_app(args.workspace, args.base_model)
    print(f"LLM Studio: workspace {demo.studio.workspace}", flush=True)
    try:
        launch(demo, args.host, args.port, auth)
    except OSError:  # Gradio found no port it could bind (a busy one, or one this user may not use)
        where = f"--port {args.port}" if args.port else "ports 7860-7959 (the default)"
        parser.error(f"{where}: cannot serve on {args.host}: in use by another program (another studio?) or not "
                     "allowed; choose another port with --port N")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
