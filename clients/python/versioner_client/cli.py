"""versioner: record deployments from CI, see what runs where, follow them live.

    versioner record  --product P --version V --env E --status success
    versioner run     --product P --version V --env E -- ./deploy.sh args
    versioner current [--product P] [--env E]
    versioner history [--product P] [--env E] [--status failed] [--since 7d]
    versioner watch   [--product P] [--env E] [--after-revision N]
    versioner approvals request|approve|reject|list|show, check, audit (governance;
              see versioner_client/approvals_cli.py)
    versioner notify  add|list|update|rm|deliveries|redeliver|test

Settings come from, in order: command-line flags, VERSIONER_* environment
variables (VERSIONER_ADDRESS, VERSIONER_TOKEN, VERSIONER_TLS, VERSIONER_CA_CERT,
VERSIONER_CLIENT_CERT, VERSIONER_CLIENT_KEY, VERSIONER_TIMEOUT, VERSIONER_RETRIES,
VERSIONER_FAIL_OPEN, and VERSIONER_DEPLOYED_BY / _SCM_SHA / _SCM_BRANCH /
_BUILD_URL), the CI system's own variables (GitHub Actions, GitLab CI, Jenkins,
CircleCI) for who/what/where, then defaults (deployed_by: the local user).

Exit codes (the table is versioner_client/exits.py; `versioner --help` prints it):
0 ok, 1 usage error or server unreachable, 4 rejected, 5 precondition conflict.

--fail-open (VERSIONER_FAIL_OPEN=1) turns "cannot reach" into a warning and exit
0, so an outage of Versioner never blocks a deployment (`run` still runs the
command and returns its exit code). Rejections and conflicts always fail.
Every error is one line on stderr, starting with "versioner: ".

Other modules add command groups: see `command_groups()`.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any, NoReturn, cast

from versioner.v1 import deployment_service_pb2 as pb

from versioner_client import approvals_cli, notify_cli
from versioner_client.approvals_cli import DEFAULT_WAIT, parse_wait
from versioner_client.ci import resolve_origin
from versioner_client.client import DEFAULT_ADDRESS
from versioner_client.errors import VersionerError
from versioner_client.exits import (
    CONNECTION_CODES,
    EXIT_ERROR,
    EXIT_OK,
    describe_error,
    help_text,
)
from versioner_client.inputs import UsageError, parse_metadata, parse_since, parse_time
from versioner_client.output import (
    dump,
    err,
    format_current,
    format_event,
    format_history,
    to_json,
)
from versioner_client.runner import SignalRelay
from versioner_client.settings import Settings, resolve_settings
from versioner_client.statuses import parse_status, status_word

EPILOG = (
    help_text()
    + """
--fail-open turns an unreachable server into a warning and exit 0; rejections still fail.
Settings: flags > VERSIONER_* environment variables > CI variables > defaults.
"""
)
# A subcommand's handler: (parsed args, connection settings, environment) -> exit code.
Handler = Callable[[argparse.Namespace, Settings, Mapping[str, str]], int]


def _status_type(text: str) -> int:
    try:
        return parse_status(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def report_error(error: VersionerError, settings: Settings) -> int:
    """Print the error line and return the exit code (0 for --fail-open outages)."""
    code, line = describe_error(error, settings.address)
    if settings.fail_open and error.code in CONNECTION_CODES:
        err(f"warning: {line} (--fail-open: continuing)")
        return EXIT_OK
    err(line)
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
        "override_reason": args.override_reason,
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
        print(dump(to_json(response)))
    else:
        deployment = response.event.deployment
        suffix = " (duplicate)" if response.duplicate else ""
        print(f"{deployment.id} {status_word(deployment.status)}{suffix}")
    return EXIT_OK


def cmd_current(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with settings.client() as client:
        response = client.current(args.product, args.environment)
    if args.json:
        print(dump(to_json(response)))
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
    with settings.client() as client:
        query = {
            "statuses": args.status or (),
            "version": args.version,
            "deployed_by": args.deployed_by,
            "since": since,
            "until": until,
        }
        # The first page's revision is the one the whole listing is consistent with.
        first = client.history_page(
            args.product, args.environment, **query, page_size=min(limit or 1000, 1000)
        )
        deployments = list(first.deployments)
        if first.next_page_token and (limit is None or len(deployments) < limit):
            rest = client.history(
                args.product,
                args.environment,
                **query,
                page_size=1000,
                page_token=first.next_page_token,
            )
            wanted = None if limit is None else limit - len(deployments)
            deployments.extend(islice(rest, wanted))
    deployments = deployments[:limit]
    if args.json:
        print(dump({"deployments": [to_json(d) for d in deployments], "revision": first.revision}))
    elif not deployments:
        print("no deployments match", file=sys.stderr)
    else:
        print("\n".join(format_history(deployments)))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    def on_reconnect(error: VersionerError, delay: float, revision: int) -> None:
        reason = " ".join(error.message.split()) or error.code.name
        err(
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
                print(dump(to_json(event), compact=True) if args.json else format_event(event))
                sys.stdout.flush()
        except KeyboardInterrupt:
            return EXIT_OK
        except BrokenPipeError:  # `versioner watch | head`: the reader is done
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    return EXIT_OK


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
        err(f"{where}: {status_word(status)} (deployment {deployment_id})")
        return EXIT_OK

    with settings.client() as client:
        if args.wait_for_approval is not None:
            try:
                code = approvals_cli.wait_for_approval(
                    client, args.product, args.version, args.environment, deployment_id,
                    args.wait_for_approval,
                )  # fmt: skip
            except VersionerError as error:
                code = report_error(error, settings)  # 0 only for --fail-open outages
            if code != EXIT_OK:
                return code
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
    parser.add_argument(
        "--override-reason", default="", help="break-glass past every rule (deployments:override)"
    )
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


class Subcommands:
    """Where subcommands are added: `add_parser` as argparse's, plus the connection options.

    A subcommand sets its handler with `parser.set_defaults(handler=...)`; the
    handler gets (args, settings, env) and returns the exit code (see `Handler`).
    """

    def __init__(
        self,
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        connection: argparse.ArgumentParser,
    ) -> None:
        self._sub = sub
        self._connection = connection

    def add_parser(
        self,
        name: str,
        *,
        help: str,
        parents: Sequence[argparse.ArgumentParser] = (),
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        kwargs.setdefault("description", help)
        kwargs.setdefault("epilog", EPILOG)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return self._sub.add_parser(name, help=help, parents=[*parents, self._connection], **kwargs)


def command_groups() -> list[Callable[[Subcommands], None]]:
    """Command groups defined in other modules, each as its `add_parsers(subparsers)`.

    Add a group with one import and one entry here.
    """
    return []


def build_parser() -> argparse.ArgumentParser:
    """The `versioner` argument parser."""
    connection = _connection_parser()
    event = _event_parser()
    parser = _Parser(
        prog="versioner",
        description="Record deployments and see what runs where (Versioner gRPC).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection],
    )
    # The subcommand parsers are _Parser too (argparse makes them of the parent's
    # class); typed as their base class so parents of any parser class are accepted.
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND"),
    )
    subparsers = Subcommands(sub, connection)

    def add(
        name: str, help_text: str, *parents: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, help=help_text, parents=parents)

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

    run = add(  # handled in main(): it also takes the command after --
        "run",
        "record STARTED, run the command after --, record COMPLETED/FAILED/ABORTED",
        event,
    )
    run.add_argument(
        "--wait-for-approval",
        nargs="?",
        const=parse_wait(DEFAULT_WAIT),
        type=parse_wait,
        metavar="TIMEOUT",
        help=f"when a rule needs an approval, request one and wait for it (default "
        f"{DEFAULT_WAIT}); rejected, expired or timed out: exit 5 without running",
    )
    approvals_cli.add_parsers(sub, [connection], EPILOG)
    for add_parsers in command_groups():
        add_parsers(subparsers)
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
        if args.subcommand == "run":
            return cmd_run(args, settings, env, command or [])
        if command is not None:
            raise UsageError(f"{args.subcommand} takes no command after --")
        handler: Handler = args.handler
        return handler(args, settings, env)
    except UsageError as error:
        err(str(error))
        return EXIT_ERROR
    except VersionerError as error:
        return report_error(error, settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
