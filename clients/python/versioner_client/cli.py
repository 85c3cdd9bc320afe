"""versioner: record deployments from CI, see what runs where, follow them live.

    versioner record  --product P --version V --env E --status success
    versioner run     --product P --version V --env E -- ./deploy.sh args
    versioner current [--product P] [--env E]
    versioner history [--product P] [--env E] [--status failed] [--since 7d]
    versioner watch   [--product P] [--env E] [--after-revision N]
    versioner notify  add|list|update|rm|deliveries|redeliver|test

Settings come from, in order: command-line flags, VERSIONER_* environment
variables (VERSIONER_ADDRESS, VERSIONER_TOKEN, VERSIONER_TLS, VERSIONER_CA_CERT,
VERSIONER_CLIENT_CERT, VERSIONER_CLIENT_KEY, VERSIONER_TIMEOUT, VERSIONER_RETRIES,
VERSIONER_FAIL_OPEN, and VERSIONER_DEPLOYED_BY / _SCM_SHA / _SCM_BRANCH /
_BUILD_URL), the CI system's own variables (GitHub Actions, GitLab CI, Jenkins,
CircleCI) for who/what/where, then defaults (deployed_by: the local user).

Exit codes:
  0  ok (`run`: the command's own exit code, 128+N when a signal N killed it)
  1  usage error, the server cannot be reached (UNAVAILABLE or DEADLINE_EXCEEDED
     after retries), or an unexpected server error
  4  rejected by the server: INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED,
     NOT_FOUND
  5  precondition conflict: FAILED_PRECONDITION (e.g. VERSION_SHA_MISMATCH)

--fail-open (VERSIONER_FAIL_OPEN=1) turns "cannot reach" into a warning and exit
0, so an outage of Versioner never blocks a deployment (`run` still runs the
command and returns its exit code). Rejections and conflicts always fail.
Every error is one line on stderr, starting with "versioner: ".
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from versioner.v1 import deployment_service_pb2 as pb

from versioner_client.ci import resolve_origin
from versioner_client.client import DEFAULT_ADDRESS, VersionerClient
from versioner_client.errors import VersionerError
from versioner_client.statuses import parse_status, status_word

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 4
EXIT_CONFLICT = 5

_CONNECTION_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_REJECTION_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
)

EPILOG = """\
exit codes:
  0  ok (run: the command's own exit code; 128+N when killed by signal N)
  1  usage error, server unreachable (after retries), or unexpected server error
  4  rejected by the server (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND)
  5  precondition conflict (FAILED_PRECONDITION, e.g. VERSION_SHA_MISMATCH)

--fail-open turns an unreachable server into a warning and exit 0; rejections still fail.
Settings: flags > VERSIONER_* environment variables > CI variables > defaults.
"""


class UsageError(Exception):
    """Bad command-line input found after parsing (exit 1)."""


# --------------------------------------------------------------------------- parsing


_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def parse_time(text: str) -> datetime:
    """An ISO 8601 time ("2026-01-01T00:00:00Z", "2026-01-01"); naive means UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_since(text: str, now: datetime | None = None, option: str = "--since") -> datetime:
    """A point in time from "7d", "24h", "30m", "1h30m", "2w" (ago) or an ISO 8601 time."""
    compact = text.strip().lower().replace(" ", "")
    if compact and _DURATION_PART.sub("", compact) == "":
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        return parse_time(text)
    except UsageError:
        raise UsageError(
            f"{option} wants a duration like 7d, 24h, 30m or an ISO time, not {text!r}"
        ) from None


def parse_metadata(pairs: Sequence[str] | None, json_text: str | None) -> dict[str, Any]:
    """extra_metadata from repeated key=value (values stay strings) or one JSON object."""
    if json_text is not None:
        try:
            value = json.loads(json_text)
        except json.JSONDecodeError as error:
            raise UsageError(f"--metadata-json is not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise UsageError('--metadata-json must be a JSON object, e.g. \'{"ticket": "OPS-1"}\'')
        return value
    metadata: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--metadata wants key=value, not {pair!r}")
        metadata[key.strip()] = value
    return metadata


def parse_bool(name: str, text: str) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off/empty."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{name} must be true or false, not {text!r}")


def _status_type(text: str) -> int:
    try:
        return parse_status(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class Settings:
    """Where and how to connect, resolved from flags, then VERSIONER_* vars, then defaults."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 10.0
    retries: int = 5
    fail_open: bool = False

    def client(self) -> VersionerClient:
        """A client for these settings (TLS files are read now: a bad path is a usage error)."""
        try:
            return VersionerClient(
                self.address,
                token=self.token,
                tls=self.tls,
                root_certificates=self.ca_cert,
                client_cert=self.client_cert,
                client_key=self.client_key,
                timeout=self.timeout,
                retries=self.retries,
            )
        except OSError as error:
            raise UsageError(f"cannot read TLS file: {error}") from None


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed flags (absent when not given) over VERSIONER_* variables."""

    def pick(attr: str, var: str) -> str | None:
        value = getattr(args, attr, None)
        if value is not None:
            return value
        return env.get(var) or None

    def number(attr: str, var: str, kind: type[float] | type[int], default: float) -> Any:
        value = getattr(args, attr, None)
        if value is not None:
            return value
        text = env.get(var)
        if not text:
            return default
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"{var} must be a number, not {text!r}") from None

    tls = getattr(args, "tls", None)
    fail_open = getattr(args, "fail_open", None)
    settings = Settings(
        address=pick("address", "VERSIONER_ADDRESS") or DEFAULT_ADDRESS,
        token=pick("token", "VERSIONER_TOKEN"),
        tls=tls if tls is not None else parse_bool("VERSIONER_TLS", env.get("VERSIONER_TLS", "")),
        ca_cert=pick("ca_cert", "VERSIONER_CA_CERT"),
        client_cert=pick("client_cert", "VERSIONER_CLIENT_CERT"),
        client_key=pick("client_key", "VERSIONER_CLIENT_KEY"),
        timeout=number("timeout", "VERSIONER_TIMEOUT", float, 10.0),
        retries=number("retries", "VERSIONER_RETRIES", int, 5),
        fail_open=fail_open
        if fail_open is not None
        else parse_bool("VERSIONER_FAIL_OPEN", env.get("VERSIONER_FAIL_OPEN", "")),
    )
    if settings.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if settings.retries < 0:
        raise UsageError("--retries must not be negative")
    return settings


# --------------------------------------------------------------------------- output


def to_json(message: Message) -> dict[str, Any]:
    """A message as the JSON-ready dict the API documents (proto field names)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _dump(value: Any, *, compact: bool = False) -> str:
    if compact:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=2, ensure_ascii=False)


def humanize_age(then: datetime, now: datetime) -> str:
    """How long ago, in the largest whole unit ("2 hours ago"): read at a glance."""
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 45:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size) if unit == "minute" else seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "1 minute ago"


def format_time(value: datetime) -> str:
    """A UTC time a person reads at a glance: 2026-01-01T12:00:00Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: float) -> str:
    """A short duration: "12s", "1m05s", "2h03m"."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; trailing blanks trimmed."""
    rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


_ENV_ORDER = {
    pb.ENVIRONMENT_TYPE_DEVELOPMENT: 0,
    pb.ENVIRONMENT_TYPE_TEST: 1,
    pb.ENVIRONMENT_TYPE_STAGING: 2,
    pb.ENVIRONMENT_TYPE_PRODUCTION: 3,
    pb.ENVIRONMENT_TYPE_UNSPECIFIED: 4,
}


def _when(deployment: pb.Deployment) -> datetime | None:
    for field in ("end_time", "start_time", "create_time"):
        if deployment.HasField(field):
            return getattr(deployment, field).ToDatetime(tzinfo=UTC)
    return None


def format_current(states: Sequence[pb.EnvironmentState], now: datetime) -> list[str]:
    """The `current` table: what runs where, and what is happening there if different.

    Products are grouped; environments follow the pipeline (dev, test, staging,
    production). LATEST appears only when some environment's latest deployment
    is not its current one (in progress, failed...).
    """
    ordered = sorted(
        states,
        key=lambda s: (s.product_name, _ENV_ORDER.get(s.environment_type, 4), s.environment_name),
    )
    rows = []
    any_latest = False
    for state in ordered:
        if state.HasField("current"):
            current = state.current
            when = _when(current)
            row = [
                state.environment_name,
                state.product_name,
                current.version,
                humanize_age(when, now) if when else "-",
                f"by {current.deployed_by}" if current.deployed_by else "",
            ]
        else:
            row = [state.environment_name, state.product_name, "-", "never completed", ""]
        latest = ""
        if state.HasField("latest") and (
            not state.HasField("current") or state.latest.id != state.current.id
        ):
            latest = f"→ {state.latest.version} {status_word(state.latest.status)}"
            when = _when(state.latest)
            if when:
                latest += f" {humanize_age(when, now)}"
            any_latest = True
        rows.append([*row, latest])
    header = ["ENVIRONMENT", "PRODUCT", "VERSION", "DEPLOYED", "BY", "LATEST"]
    if not any_latest:
        header, rows = header[:-1], [row[:-1] for row in rows]
    return table(header, rows)


def format_history(deployments: Sequence[pb.Deployment]) -> list[str]:
    """The `history` table, newest first as the server sends it."""
    rows = []
    for d in deployments:
        when = d.create_time.ToDatetime(tzinfo=UTC) if d.HasField("create_time") else None
        duration = (
            format_duration(d.duration.ToTimedelta().total_seconds())
            if d.HasField("duration")
            else ""
        )
        rows.append(
            [
                format_time(when) if when else "-",
                status_word(d.status),
                d.product_name,
                d.version + (" (rollback)" if d.is_rollback else ""),
                d.environment_name,
                d.deployed_by,
                duration,
                d.id,
            ]
        )
    header = ["TIME", "STATUS", "PRODUCT", "VERSION", "ENVIRONMENT", "BY", "DURATION", "ID"]
    return table(header, rows)


def format_event(event: pb.Event) -> str:
    """One `watch` line: time, revision, status, product, version, environment, by."""
    d = event.deployment
    when = event.event_time if event.HasField("event_time") else event.record_time
    parts = [
        format_time(when.ToDatetime(tzinfo=UTC)),
        f"#{event.revision}",
        f"{status_word(event.status):<9}",
        d.product_name,
        d.version,
        d.environment_name,
    ]
    if d.deployed_by:
        parts.append(f"by {d.deployed_by}")
    return "  ".join(parts)


def describe_error(error: VersionerError, address: str) -> tuple[int, str]:
    """The exit code and the one stderr line for a failed call."""
    message = " ".join(str(error.message).split()) or error.code.name
    if error.code in _CONNECTION_CODES:
        return EXIT_ERROR, f"cannot reach {address}: {message}"
    if error.code == grpc.StatusCode.FAILED_PRECONDITION:
        reason = f" ({error.reason})" if error.reason else ""
        return EXIT_CONFLICT, f"conflict{reason}: {message}"
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_REJECTED, f"rejected: {' '.join(str(error).split())}"
    if error.code in _REJECTION_CODES:
        return EXIT_REJECTED, f"rejected ({error.code.name.lower().replace('_', ' ')}): {message}"
    return EXIT_ERROR, f"server error ({error.code.name}): {message}"


def _err(line: str) -> None:
    print(f"versioner: {line}", file=sys.stderr, flush=True)


def report_error(error: VersionerError, settings: Settings) -> int:
    """Print the error line and return the exit code (0 for --fail-open outages)."""
    code, line = describe_error(error, settings.address)
    if settings.fail_open and error.code in _CONNECTION_CODES:
        _err(f"warning: {line} (--fail-open: continuing)")
        return EXIT_OK
    _err(line)
    return code


# --------------------------------------------------------------------------- commands


def _origin(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = ""
    origin = resolve_origin(
        {
            "deployed_by": args.deployed_by,
            "scm_sha": args.scm_sha,
            "scm_branch": args.scm_branch,
            "build_url": args.build_url,
        },
        env,
        default_user=user,
    )
    return {
        "deployed_by": origin.deployed_by,
        "scm_sha": origin.scm_sha,
        "scm_branch": origin.scm_branch,
        "build_url": origin.build_url,
    }


def _event_fields(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of VersionerClient.record shared by `record` and `run`."""
    return {
        **_origin(args, env),
        "metadata": parse_metadata(args.metadata, args.metadata_json),
        "scm_commit_time": parse_time(args.scm_commit_time) if args.scm_commit_time else None,
    }


def cmd_record(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    fields = _event_fields(args, env)
    event_time = parse_time(args.event_time) if args.event_time else None
    with settings.client() as client:
        response = client.record(
            args.product,
            args.version,
            args.environment,
            args.status,
            event_time=event_time,
            event_id=args.event_id,
            deployment_id=args.deployment_id,
            **fields,
        )
    if args.json:
        print(_dump(to_json(response)))
    else:
        deployment = response.event.deployment
        suffix = " (duplicate)" if response.duplicate else ""
        print(f"{deployment.id} {status_word(deployment.status)}{suffix}")
    return EXIT_OK


def cmd_current(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with settings.client() as client:
        response = client.current(args.product, args.environment)
    if args.json:
        print(_dump(to_json(response)))
    elif not response.states:
        print("no deployments recorded yet", file=sys.stderr)
    else:
        print("\n".join(format_current(response.states, datetime.now(UTC))))
    return EXIT_OK


def cmd_history(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    if args.limit < 0:
        raise UsageError("--limit must not be negative")
    since = parse_since(args.since) if args.since else None
    until = parse_since(args.until, option="--until") if args.until else None
    limit = args.limit or None  # 0 = everything
    deployments: list[pb.Deployment] = []
    revision = 0
    with settings.client() as client:
        token = ""
        while limit is None or len(deployments) < limit:
            page = client.history_page(
                args.product,
                args.environment,
                statuses=args.status or (),
                version=args.version,
                deployed_by=args.deployed_by,
                since=since,
                until=until,
                page_size=min(limit - len(deployments), 1000) if limit else 1000,
                page_token=token,
            )
            revision = revision or page.revision
            deployments.extend(page.deployments)
            token = page.next_page_token
            if not token:
                break
    deployments = list(islice(deployments, limit))
    if args.json:
        print(_dump({"deployments": [to_json(d) for d in deployments], "revision": revision}))
    elif not deployments:
        print("no deployments match", file=sys.stderr)
    else:
        print("\n".join(format_history(deployments)))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    def on_reconnect(error: VersionerError, delay: float, revision: int) -> None:
        reason = " ".join(error.message.split()) or error.code.name
        _err(
            f"connection lost ({error.code.name}: {reason}); "
            f"resuming after revision {revision} in {delay:.1f}s"
        )

    with settings.client() as client:
        try:
            for event in client.watch(
                args.product,
                args.environment,
                args.status or (),
                args.after_revision,
                on_reconnect=on_reconnect,
            ):
                print(_dump(to_json(event), compact=True) if args.json else format_event(event))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return EXIT_OK
        except BrokenPipeError:  # `versioner watch | head`: the reader is done
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    return EXIT_OK


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
        _err(f"received {signal.Signals(signum).name}, relaying it to the command")
        with contextlib.suppress(ProcessLookupError):
            self._child.send_signal(signum)

    def run(self, command: Sequence[str]) -> int:
        """Run ``command`` with our stdio and wait for it; its exit code as a shell reports it.

        128+N when signal N killed it; 127 / 126 when it cannot be started.
        """
        try:
            child = subprocess.Popen(list(command))
        except FileNotFoundError:
            _err(f"run: command not found: {command[0]}")
            return 127
        except PermissionError:
            _err(f"run: permission denied: {command[0]}")
            return 126
        self._child = child
        for signum in self.received:  # arrived while it was starting
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)
        returncode = child.wait()
        return 128 - returncode if returncode < 0 else returncode


def cmd_run(
    args: argparse.Namespace, settings: Settings, env: Mapping[str, str], command: Sequence[str]
) -> int:
    if not command:
        raise UsageError("run: give the command after --, e.g. versioner run ... -- ./deploy.sh")
    fields = _event_fields(args, env)
    # Generated here so that the final event lands on the deployment STARTED opened.
    deployment_id = args.deployment_id or uuid.uuid4().hex
    where = f"{args.product} {args.version} to {args.environment}"

    def record(status: int) -> int:
        """Record one event; returns an exit code (0 when recorded or failing open)."""
        try:
            client.record(
                args.product,
                args.version,
                args.environment,
                status,
                deployment_id=deployment_id,
                **fields,
            )
        except VersionerError as error:
            return report_error(error, settings)
        _err(f"{where}: {status_word(status)} (deployment {deployment_id})")
        return EXIT_OK

    with settings.client() as client:
        with SignalRelay() as relay:
            code = record(pb.DEPLOYMENT_STATUS_STARTED)
            if code != EXIT_OK:
                return code  # rejected, or unreachable without --fail-open: do not deploy
            # Cancelled while STARTED was being recorded: do not start the command.
            exit_code = 128 + relay.received[0] if relay.received else relay.run(command)
        if relay.received:
            final = pb.DEPLOYMENT_STATUS_ABORTED
        elif exit_code == 0:
            final = pb.DEPLOYMENT_STATUS_COMPLETED
        else:
            final = pb.DEPLOYMENT_STATUS_FAILED
        code = record(final)
    # The command's own failure matters most; a failed final record only
    # surfaces when the command itself succeeded.
    return exit_code if exit_code != 0 else code


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 1 for usage errors, as documented (argparse uses 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _connection_parser() -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (absent unless given)."""
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address", help=f"server host:port (VERSIONER_ADDRESS; default {DEFAULT_ADDRESS})"
    )
    group.add_argument("--token", help="bearer token (VERSIONER_TOKEN)")
    group.add_argument("--tls", action="store_true", help="use TLS (VERSIONER_TLS)")
    group.add_argument("--ca-cert", help="PEM file of CAs to trust; implies --tls")
    group.add_argument("--client-cert", help="PEM client certificate for mTLS; implies --tls")
    group.add_argument("--client-key", help="PEM client key for mTLS")
    group.add_argument(
        "--timeout", type=float, help="seconds per attempt (VERSIONER_TIMEOUT; default 10)"
    )
    group.add_argument(
        "--retries",
        type=int,
        help="extra attempts when unreachable (VERSIONER_RETRIES; default 5)",
    )
    group.add_argument(
        "--fail-open",
        action="store_true",
        help="an unreachable server is a warning, not an error (VERSIONER_FAIL_OPEN)",
    )
    return parser


def _event_parser() -> argparse.ArgumentParser:
    """What `record` and `run` both say about a deployment."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--product", required=True, help="product name, e.g. my-service")
    parser.add_argument("--version", required=True, help="version, e.g. 1.2.3")
    parser.add_argument(
        "--env", "--environment", dest="environment", required=True, help="e.g. production"
    )
    parser.add_argument("--deployed-by", help="who deploys (default: CI user, else local user)")
    parser.add_argument("--scm-sha", help="commit SHA (default: from CI)")
    parser.add_argument("--scm-branch", help="branch (default: from CI)")
    parser.add_argument("--build-url", help="link to the pipeline (default: from CI)")
    parser.add_argument("--scm-commit-time", help="ISO time of the commit (lead-time metrics)")
    parser.add_argument("--deployment-id", default="", help="ties several events to one deployment")
    meta = parser.add_mutually_exclusive_group()
    meta.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="extra metadata, repeatable; values stay strings",
    )
    meta.add_argument("--metadata-json", metavar="JSON", help="extra metadata as a JSON object")
    return parser


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--product", default="", help="only this product")
    parser.add_argument("--env", "--environment", dest="environment", default="", help="only this")


def build_parser() -> argparse.ArgumentParser:
    """The `versioner` argument parser."""
    connection = _connection_parser()
    event = _event_parser()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="versioner",
        description="Record deployments and see what runs where (Versioner gRPC).",
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[connection],
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def add(
        name: str, help_text: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=formatter,
            parents=[*parents, connection],
        )

    record = add("record", "record one deployment event", event)
    record.add_argument(
        "--status",
        required=True,
        type=_status_type,
        help="success, failed, started, pending, aborted (and aliases)",
    )
    record.add_argument("--event-id", help="idempotency key (default: a new uuid4)")
    record.add_argument("--event-time", help="when it happened, ISO 8601 (default: now)")
    record.add_argument("--json", action="store_true", help="print the response as JSON")
    record.set_defaults(handler=cmd_record)

    current = add("current", "what runs where")
    _filter_options(current)
    current.add_argument("--json", action="store_true", help="print JSON")
    current.set_defaults(handler=cmd_current)

    history = add("history", "past deployments, newest first")
    _filter_options(history)
    history.add_argument(
        "--status", action="append", type=_status_type, help="only this status (repeatable)"
    )
    history.add_argument("--version", default="", help="only this version")
    history.add_argument("--deployed-by", default="", help="only by this person")
    history.add_argument("--since", help="7d, 24h, 30m or an ISO 8601 time")
    history.add_argument("--until", help="like --since: deployments created before it")
    history.add_argument("--limit", type=int, default=20, help="at most N (default 20; 0 = all)")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(handler=cmd_history)

    watch = add("watch", "follow deployments live (Ctrl-C to stop)")
    _filter_options(watch)
    watch.add_argument(
        "--status", action="append", type=_status_type, help="only this status (repeatable)"
    )
    watch.add_argument(
        "--after-revision", type=int, help="replay stored events after revision N first"
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.set_defaults(handler=cmd_watch)

    run = add(
        "run",
        "record STARTED, run the command after --, record COMPLETED/FAILED/ABORTED",
        event,
    )
    run.set_defaults(handler=cmd_run)

    from versioner_client import notify_cli  # imports this module: load it only now

    notify_cli.add_parsers(sub, [connection])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `versioner` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if "--" in argv:  # everything after the first -- is the command of `run`
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_ERROR
    env = os.environ
    settings = Settings()
    try:
        settings = resolve_settings(args, env)
        handler: Callable[..., int] = args.handler
        if handler is cmd_run:
            return cmd_run(args, settings, env, command or [])
        if command is not None:
            raise UsageError(f"{args.subcommand} takes no command after --")
        return handler(args, settings, env)
    except UsageError as error:
        _err(str(error))
        return EXIT_ERROR
    except VersionerError as error:
        return report_error(error, settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
