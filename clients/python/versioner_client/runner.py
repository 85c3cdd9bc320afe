"""`versioner run`: record STARTED, run the command, record how it ended.

The command gets our stdio; SIGINT and SIGTERM are relayed to it rather than
killing us, so a cancelled deployment is recorded ABORTED instead of being left
STARTED forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from versioner_client.output import err


def _terminal_sent_sigint() -> bool:
    """Whether a SIGINT most likely came from the terminal's Ctrl-C.

    Ctrl-C signals the whole foreground process group, child included; relaying
    it again would make the child see two interrupts (many tools treat a second
    one as "force quit"). A SIGINT sent to us alone (kill -INT, a CI runner
    cancelling) must be relayed.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class SignalRelay:
    """While active, SIGINT/SIGTERM are noted and relayed to the command, not fatal to us.

    Active from before STARTED is recorded until the command has ended, so a
    cancel at any moment ends as an ABORTED deployment rather than a STARTED
    one left open forever. Used as a context manager around ``run``.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._child: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalRelay:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        if self._child is None:
            return
        if signum == signal.SIGINT and _terminal_sent_sigint():
            return  # the child got this Ctrl-C from the terminal already
        err(f"received {signal.Signals(signum).name}, relaying it to the command")
        with contextlib.suppress(ProcessLookupError):
            self._child.send_signal(signum)

    def run(self, command: Sequence[str]) -> int:
        """Run ``command`` with our stdio and wait for it; its exit code as a shell reports it.

        128+N when signal N killed it; 127 / 126 when it cannot be started.
        """
        try:
            child = subprocess.Popen(list(command))
        except FileNotFoundError:
            err(f"run: command not found: {command[0]}")
            return 127
        except PermissionError:
            err(f"run: permission denied: {command[0]}")
            return 126
        self._child = child
        for signum in self.received:  # arrived while it was starting
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
        returncode = child.wait()
        return 128 - returncode if returncode < 0 else returncode
