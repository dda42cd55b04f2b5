"""FrontendAssets: Gradio's page scripts and styles (its /assets/ folder) served from memory, compressed once.

Gradio serves each of these files from disk through its routes and compresses it afresh for every request: a
studio page asks for about 90 of them as it opens, and the server answers each under Python's one lock, in
turn with the pages' events. Their names carry a hash of their content, so a browser may keep them for good."""

from __future__ import annotations

import mimetypes
from pathlib import Path

import brotli  # Gradio's own dependency (its compression middleware)
from gradio.route_utils import BUILD_PATH_LIB
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIX = "/assets/"
CACHED_FOR_GOOD = b"public, max-age=31536000, immutable"
QUALITY = 5  # Brotli's level: each file is compressed once, at its first request; Gradio's middleware uses 4


class FrontendAssets:
    """ASGI middleware: GET /assets/<name>, for a file of Gradio's assets folder, answered from memory (Brotli
    when the browser takes it); every other request goes on to Gradio. Only names listed in the folder at start
    are served, so no request can reach another file."""

    def __init__(self, app: ASGIApp, folder: str | Path = BUILD_PATH_LIB) -> None:
        self.app = app
        self.folder = Path(folder)
        self.names = {p.name for p in self.folder.iterdir() if p.is_file()}
        self.loaded: dict[str, tuple[bytes, bytes, bytes]] = {}  # name -> (content type, raw, Brotli)

    def load(self, name: str) -> tuple[bytes, bytes, bytes]:
        if name not in self.loaded:
            raw = (self.folder / name).read_bytes()
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            self.loaded[name] = (kind.encode(), raw, brotli.compress(raw, quality=QUALITY))
        return self.loaded[name]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        name = path[len(PREFIX) :] if path.startswith(PREFIX) and scope["method"] == "GET" else ""
        if name not in self.names:
            await self.app(scope, receive, send)
            return
        kind, raw, compressed = self.load(name)
        takes_br = any(k == b"accept-encoding" and b"br" in v for k, v in scope["headers"])
        body = compressed if takes_br else raw
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", CACHED_FOR_GOOD), (b"vary", b"Accept-Encoding")]  # fmt: skip
        if takes_br:
            headers.append((b"content-encoding", b"br"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
