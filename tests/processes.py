"""Servers as real processes: for durability, signals and replica tests."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading

import grpc
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc


class ServerProcess:
    """`python -m versioner_grpc` in a subprocess; knows its address once it serves."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "versioner_grpc", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[dict] = []
        self._serving: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        serving = self._serving.get(timeout=timeout)
        if serving is None:
            raise RuntimeError(f"server exited: {self.proc.wait()}; log: {self.lines[-5:]}")
        self.address = serving["grpc_address"]
        self.metrics_address = serving.get("metrics_address", "")
        self.http_address = serving.get("http_address", "")
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.DeploymentServiceStub(self.channel)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line}
            self.lines.append(entry)
            if entry.get("event") == "serving":
                self._serving.put(entry)
        self._serving.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)
