"""SQLite on a full filesystem: writes are UNAVAILABLE saying "disk full", logged once,
shown in health and versioner_store_writable, and all is well once space is back.

Needs a small tmpfs, mounted here when the test runs as root (skipped otherwise).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from tests.conftest import start_server
from tests.faults.common import NOT_SERVING, SERVING, event, health, versions, wait_until

TMPFS_SIZE = "2m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (root only; skipped with the reason otherwise)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; disk-full behaviour not exercised")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); disk-full not exercised")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem; returns the filler file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    try:
                        f.write(b"\0" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
    return filler


def writable_gauge(metrics_url: str) -> str:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("versioner_store_writable "):
                return line.split()[1]
    raise AssertionError("no versioner_store_writable in /metrics")


def bulky(version: str) -> object:
    metadata = struct_pb2.Struct()
    metadata.update({"notes": "x" * 30_000})
    return event(version, extra_metadata=metadata)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_full_disk_is_named_logged_once_reported_and_recovered(config, small_disk, caplog):
    caplog.set_level(logging.WARNING, logger="versioner_grpc.store.database")
    running = start_server(config, database_url=f"sqlite:///{small_disk}/versioner.db")
    try:
        stub = running.stub
        stub.RecordEvent(event("before"), timeout=30)
        filler = fill(small_disk)
        failure = None
        for i in range(300):  # free pages in the WAL take a few writes to use up
            try:
                stub.RecordEvent(bulky(f"fill-{i}"), timeout=30)
            except grpc.RpcError as err:
                failure = err
                break
        assert failure is not None, "writes kept succeeding on a full filesystem"
        assert failure.code() == grpc.StatusCode.UNAVAILABLE, failure.details()
        assert "disk full" in (failure.details() or ""), failure.details()
        for i in range(3):  # more failures: still one log line
            with pytest.raises(grpc.RpcError):
                stub.RecordEvent(bulky(f"again-{i}"), timeout=30)
        wait_until(lambda: health(running.channel) == NOT_SERVING, what="NOT_SERVING")
        assert writable_gauge(running.metrics_url) == "0"
        down = [r for r in caplog.records if "not writable" in r.getMessage()]
        assert len(down) == 1 and "disk full" in down[0].getMessage(), down

        filler.unlink()
        wait_until(lambda: health(running.channel) == SERVING, what="SERVING once space is back")
        assert writable_gauge(running.metrics_url) == "1"
        stub.RecordEvent(event("after"), timeout=30)
        assert "after" in versions(stub) and "before" in versions(stub)
        up = [r for r in caplog.records if "writable again" in r.getMessage()]
        assert len(up) == 1, up
    finally:
        running.stop()
