"""What the loopback shops share: a request handler that reads a request's
path, query, headers and body (JSON, a form, or raw bytes) and answers JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


class JSONHandler(BaseHTTPRequestHandler):
    """Subclasses implement ``handle_json(method, path, query, headers, body)``
    returning ``(status, data, extra headers)``."""

    def handle_json(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                    body: Any) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))  # the last value wins, as in PHP
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
            body: Any = dict(parse_qsl(raw.decode()))
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, data, extra = self.handle_json(self.command, parts.path, query, headers, body)
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 (an ephemeral port), serving in a
    daemon thread once ``start``-ed; quiet about clients that give up."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> LoopbackServer:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a stalled answer
