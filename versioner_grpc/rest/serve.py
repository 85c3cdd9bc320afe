"""uvicorn in the gRPC server's process and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from versioner_grpc.config import Config


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The Versioner server owns SIGTERM/SIGINT and drains both APIs itself."""
        yield


def bind(address: str) -> socket.socket:
    """A listening socket for host:port (port 0 picks one); OSError when taken."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it each response waits out the peer's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock


class HttpServer:
    """Serves `app` on `config.http_listen`, with TLS from the --tls-* flags."""

    def __init__(self, app: FastAPI, config: Config) -> None:
        self.socket = bind(config.http_listen)
        self.port: int = self.socket.getsockname()[1]
        options = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,  # ObservingMiddleware logs each request once
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=max(1, int(config.shutdown_grace)),
            ssl_certfile=config.tls_cert or None,
            ssl_keyfile=config.tls_key or None,
            ssl_ca_certs=config.tls_client_ca or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.tls_client_ca else ssl.CERT_NONE,
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.server = _Uvicorn(options)
        self._task: asyncio.Task[None] | None = None

    @property
    def tls(self) -> bool:
        return self.server.config.is_ssl

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()  # raises why it stopped
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace` seconds), close."""
        if self._task is not None:
            if grace is not None:  # read by uvicorn when it shuts down
                self.server.config.timeout_graceful_shutdown = max(1, round(grace))
            self.server.should_exit = True
            await self._task
        self.socket.close()
