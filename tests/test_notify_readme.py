"""The README's webhook receiver, run as written, against a real server."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from versioner.v1 import notification_service_pb2 as npb

from tests.test_notifications import (  # noqa: F401 (fixtures)
    FAILED,
    SUCCEEDED,
    WEBHOOK,
    notify_config,
    nserver,
    nstub,
    wait_settled,
)
from tests.test_watch import record

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_receiver() -> str:
    section = README.read_text().split("## Notifications", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_receiver_accepts_signed_webhooks_and_rejects_a_wrong_secret(nserver, tmp_path):  # noqa: F811
    code = readme_receiver()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    script = tmp_path / "receiver.py"
    script.write_text(code)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "readme-secret-0123456789"
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env={"WEBHOOK_SECRET": secret, "PORT": str(port)},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/hook"
        good = (
            nstub(nserver)
            .CreateSubscription(
                npb.CreateSubscriptionRequest(name="good", url=url, format=WEBHOOK, secret=secret)
            )
            .subscription
        )
        bad = (
            nstub(nserver)
            .CreateSubscription(
                npb.CreateSubscriptionRequest(
                    name="bad", url=url, format=WEBHOOK, secret="another-secret-98765"
                )
            )
            .subscription
        )
        record(nserver.stub)
        (accepted,) = wait_settled(nserver, good.id, 1)
        (rejected,) = wait_settled(nserver, bad.id, 1)
        assert accepted.state == SUCCEEDED and accepted.attempts[0].http_status == 204
        assert rejected.state == FAILED and rejected.attempts[0].http_status == 401
    finally:
        proc.terminate()
        proc.wait(10)
