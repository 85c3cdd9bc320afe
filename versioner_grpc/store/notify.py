"""Word of writes made by other replicas: PostgreSQL LISTEN/NOTIFY.

The writer sends NOTIFY on CHANNEL in each commit that stored events (writer.py);
every replica LISTENs on a connection of its own and tells its subscriber that
something may have been written elsewhere. SQLite has a single writer process,
so there is nothing to listen to (the watch hub's slow poll still runs).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Callable

import psycopg2

from versioner_grpc.logs import fields

log = logging.getLogger("versioner.watch")
CHANNEL = "versioner_events"


class PostgresListener:
    """LISTEN on CHANNEL on a connection of its own; calls `poke` on each NOTIFY.

    `poke` runs on the listener's thread, also after each (re)connect, since
    notifications sent while disconnected are lost.
    """

    def __init__(self, url: str, poke: Callable[[], None]) -> None:
        self.url = url
        self.poke = poke
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="versioner-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = psycopg2.connect(self.url, connect_timeout=5)
                conn.autocommit = True
                conn.cursor().execute(f"LISTEN {CHANNEL}")
                self.poke()  # we may have missed notifications while reconnecting
                while not self._stop.is_set():
                    if select.select([conn], [], [], 1.0)[0]:
                        conn.poll()
                        if conn.notifies:
                            conn.notifies.clear()
                            self.poke()
            except Exception as exc:
                log.warning("LISTEN connection lost: %s", exc, extra=fields(event="listen_lost"))
                self._stop.wait(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
