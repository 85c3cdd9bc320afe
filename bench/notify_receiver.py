"""A loopback webhook receiver for `python -m bench.notify`, in a process of its own.

Prints its port, answers 200 to every POST, and on SIGTERM writes one line per
request received (subscription path, commit-to-receipt latency in µs) to the
file named on its command line.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received: list[tuple[str, int]] = []
lock = threading.Lock()


def committed_at(body: bytes) -> float:
    """The deployment's update_time: set in the transaction that committed the event."""
    stamp = json.loads(body)["deployment"]["update_time"]
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add 40 ms a request

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        now = time.time()
        with lock:
            received.append((self.path, int((now - committed_at(body)) * 1e6)))
            sys.stdout.write(".")
            sys.stdout.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> int:
    out = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        with lock, open(out, "w") as f:
            for path, latency in received:
                f.write(f"{path} {latency}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
