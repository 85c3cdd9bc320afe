"""Server processes (Versioner and the null service), /proc readings, PostgreSQL databases."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
# Where the server code comes from: this checkout, or a snapshot of one revision
# (--code REV: `git archive` into a temp dir, every process started from there).
CODE = Path(os.environ.get("VERSIONER_BENCH_CODE", REPO))
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerProc:
    """A server in a subprocess, its stderr (JSON log lines) in a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, timeout: float = 120) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=CODE,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.pid = self.proc.pid
        self.database_url = ""
        serving = self._wait_serving(timeout)
        self.address: str = serving["grpc_address"]
        self.metrics_address: str = serving.get("metrics_address", "") or ""
        self.http_address: str = serving.get("http_address", "") or ""

    def _wait_serving(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        offset = 0
        buffer = ""
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    entry: dict[str, Any] = json.loads(line)
                    if entry.get("event") == "serving":
                        return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not serve within {timeout}s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def rss_mb(self) -> float:
        return status_kb(self.pid, "VmRSS") / 1024

    def hwm_mb(self) -> float:
        return status_kb(self.pid, "VmHWM") / 1024

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def versioner(
    database_url: str, log_path: Path, *, metrics: bool = True, extra: list[str] | None = None
) -> ServerProc:
    argv = [
        sys.executable,
        "-m",
        "versioner_grpc",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0" if metrics else "off",
        "--http-listen",
        "off",
        "--database-url",
        database_url,
        *(extra or []),
    ]
    server = ServerProc("versioner", argv, log_path)
    server.database_url = database_url
    return server


def pg_backend_pids(url: str) -> list[int]:
    """PostgreSQL backend processes connected to the database of `url` (its server's)."""
    if not url.startswith("postgres"):
        return []
    try:
        import psycopg2

        conn = psycopg2.connect(url, connect_timeout=3)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            pids = [row[0] for row in cur.fetchall()]
        conn.close()
        return pids
    except Exception:
        return []


_HELP: list[str] = []


def export_snapshot(revision: str) -> tuple[Path, str]:
    """`git archive` the server code at `revision` into a temp dir: (dir, short rev)."""
    short = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target = Path(tempfile.mkdtemp(prefix=f"versioner-code-{short}-"))
    archive = subprocess.Popen(
        ["git", "archive", short, "versioner_grpc", "clients/python", "protos"],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {revision} failed")
    return target, short


def versioner_has_flag(flag: str) -> bool:
    """Whether this version of the server accepts `flag` (read from --help once)."""
    if not _HELP:
        _HELP.append(
            subprocess.run(
                [sys.executable, "-m", "versioner_grpc", "--help"],
                cwd=CODE,
                capture_output=True,
                text=True,
            ).stdout
        )
    return flag in _HELP[0]


def null_service(log_path: Path) -> ServerProc:
    argv = [sys.executable, "-m", "bench.null_service", "--listen", "127.0.0.1:0"]
    return ServerProc("null", argv, log_path)


def null_http(log_path: Path) -> ServerProc:
    argv = [sys.executable, "-m", "bench.null_http", "--listen", "127.0.0.1:0"]
    return ServerProc("null-http", argv, log_path)


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process and its threads (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    parts = stat.rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


class CpuWindow:
    """CPU used over a window by our processes, and by everything else on the machine."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = time.monotonic()
        self.machine = machine_busy_seconds()
        self.cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def result(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        out = {}
        ours = 0.0
        for name, pid in self.pids.items():
            used = cpu_seconds(pid) - self.cpu[name]
            ours += used
            out[f"{name}_cores"] = round(used / elapsed, 3)
        machine = (machine_busy_seconds() - self.machine) / elapsed
        out["machine_cores"] = round(machine, 3)
        out["foreign_cores"] = round(max(0.0, machine - ours), 3)
        return out


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def git_revision() -> str:
    """The revision of the server code (with a digest of uncommitted changes, if any)."""
    snapshot = os.environ.get("VERSIONER_BENCH_REV")
    if snapshot:
        return f"{snapshot} (snapshot)"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "HEAD", "--", "versioner_grpc", "protos", "clients/python"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return ""
    if not dirty:
        return head
    # Uncommitted changes: name them by a digest, so two runs can tell they differ.
    return f"{head}+dirty-{hashlib.sha1(dirty.encode()).hexdigest()[:8]}"


class PostgresDatabases:
    """Fresh databases on a PostgreSQL server, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def reachable(self) -> str:
        """'' when reachable, else why not."""
        try:
            import psycopg2

            conn = psycopg2.connect(self.admin_url, connect_timeout=3)
            conn.close()
            return ""
        except Exception as exc:
            return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)

    def create(self, label: str) -> str:
        import psycopg2

        name = f"versioner_bench_{os.getpid()}_{label}_{int(time.time())}".lower()
        conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        self.created.append(name)
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + name))

    def drop(self, url: str) -> None:
        import psycopg2

        name = urlsplit(url).path.lstrip("/")
        conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            parts = urlsplit(self.admin_url)
            with contextlib.suppress(Exception):
                self.drop(urlunsplit(parts._replace(path="/" + name)))


def database_size_mb(url: str) -> float:
    if url.startswith("sqlite:"):
        path = Path(urlsplit(url).path[1:] if url.startswith("sqlite:///") else url)
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += Path(str(path) + suffix).stat().st_size
        return round(total / 1024 / 1024, 1)
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        row = cur.fetchone()
        size: float = row[0] if row else 0
    conn.close()
    return round(size / 1024 / 1024, 1)
