"""A TCP relay that can stop, freeze and slow the connections through it.

In-process and standard library only: a listener thread and two pump threads
per connection. Put it between the server and PostgreSQL to play a database
that vanishes (`stop`), hangs with its connections open (`freeze`), or crawls
(`slow`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    """Relays 127.0.0.1:`port` to `upstream` until stop(); see the module docstring."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.delay = 0.0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    # Faults ------------------------------------------------------------------

    def freeze(self) -> None:
        """Keep every connection open (new ones too) but move no byte: a hung database."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Undo freeze(): held bytes flow on."""
        self._flowing.set()

    def slow(self, delay: float) -> None:
        """Hold each chunk `delay` seconds before passing it on (0: full speed)."""
        self.delay = delay

    def drop_connections(self) -> None:
        """Reset every open connection, keep accepting new ones (a database restart)."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stop(self) -> None:
        """Close the listener and every connection: the database is gone."""
        self.stopped.set()
        self._flowing.set()
        self.listener.close()
        self.thread.join(5)
        self.drop_connections()

    # Relaying ----------------------------------------------------------------

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self.lock:
                if self.stopped.is_set():
                    client.close()
                    server.close()
                    return
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                if self.delay:
                    time.sleep(self.delay)
                if self.stopped.is_set():
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
