"""A real HTTP receiver for webhook tests: records every request, verifies signatures.

Each path (one per subscription) has a script of answers; once it runs out the
receiver answers 200. Answers: an int status, ("status", code, headers),
("hang", seconds), ("close",) to drop the connection mid-response, or
("redirect", location).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers["x-versioner-delivery"]


class Receiver:
    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self.secrets = secrets or {}  # path -> secret; every request on it must be signed
        self.scripts: dict[str, list[Any]] = defaultdict(list)
        self.requests: list[Received] = []
        self.bad_signatures: list[Received] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms a request

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                receiver._arrived(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def script(self, path: str, *answers: Any) -> None:
        with self.lock:
            self.scripts["/" + path].extend(answers)

    def _arrived(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        got = Received(handler.path, headers, body)
        secret = self.secrets.get(handler.path.lstrip("/"))
        with self.lock:
            if secret is not None:
                expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(headers.get("x-versioner-signature", ""), expected):
                    self.bad_signatures.append(got)
            self.requests.append(got)
            script = self.scripts[handler.path]
            answer = script.pop(0) if script else 200
            self.changed.notify_all()
        self._answer(handler, answer)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, answer: Any) -> None:
        if isinstance(answer, int):
            answer = ("status", answer, {})
        kind = answer[0]
        if kind == "hang":
            time.sleep(answer[1])
            answer = ("status", 200, {})
        if kind == "close":
            handler.send_response(200)
            handler.send_header("Content-Length", "100")
            handler.end_headers()
            handler.wfile.write(b"partial")
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.close()
            return
        if kind == "redirect":
            answer = ("status", 307, {"Location": answer[1]})
        _, code, headers = answer
        payload = json.dumps({"ok": 200 <= code < 300}).encode()
        handler.send_response(code)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == "/" + path]

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Received]:
        """The first `count` requests on `path`; fails if they do not come in time."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                got = [r for r in self.requests if r.path == "/" + path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} of {count} requests on /{path} arrived")
                self.changed.wait(left)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
