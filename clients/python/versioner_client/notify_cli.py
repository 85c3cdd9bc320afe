"""`versioner notify add|list|update|rm|deliveries|redeliver|test`: manage notifications.

Subscriptions are named by id or by name. Secrets are read from an environment
variable or stdin rather than the command line, where `ps` would show them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

from versioner.v1 import notification_service_pb2 as npb

from versioner_client.exits import EXIT_OK
from versioner_client.inputs import UsageError
from versioner_client.notifications import (
    ENVIRONMENT_TYPES,
    FORMATS,
    NotificationClient,
    resolve_subscription,
)
from versioner_client.output import dump, table, to_json
from versioner_client.settings import Settings

EVENT_TYPES = (
    "deployment.pending", "deployment.started", "deployment.completed", "deployment.failed",
    "deployment.aborted", "deployment.blocked", "deployment.override", "approval.requested",
    "approval.approved", "approval.rejected",
)  # fmt: skip
_FILTERS = {
    "product": "products",
    "env": "environments",
    "env_type": "environment_types",
    "event": "event_types",
}


def _secret(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """The secret from --secret-env VAR or --secret-stdin; None when neither is given."""
    if getattr(args, "secret_env", None):
        value = env.get(args.secret_env)
        if value is None:
            raise UsageError(f"--secret-env: {args.secret_env} is not set")
        return value
    if getattr(args, "secret_stdin", False):
        return sys.stdin.readline().rstrip("\r\n")
    return None


def _client(settings: Settings) -> NotificationClient:
    return settings.client().notifications


def _subscription(client: NotificationClient, key: str) -> npb.Subscription:
    try:
        return resolve_subscription(client.list_subscriptions(), key)
    except LookupError as exc:
        raise UsageError(str(exc)) from None


def _filters_text(sub: npb.Subscription) -> str:
    parts = []
    if sub.products:
        parts.append("products=" + ",".join(sub.products))
    if sub.environments:
        parts.append("envs=" + ",".join(sub.environments))
    if sub.environment_types:
        names = {v: k for k, v in ENVIRONMENT_TYPES.items()}
        parts.append("types=" + ",".join(names.get(t, str(t)) for t in sub.environment_types))
    if sub.event_types:
        parts.append("events=" + ",".join(sub.event_types))
    return " ".join(parts) or "everything"


def format_subscriptions(subs: Sequence[npb.Subscription]) -> list[str]:
    formats = {v: k for k, v in FORMATS.items()}
    return table(
        ["ID", "NAME", "FORMAT", "ENABLED", "SIGNED", "URL", "FILTERS"],
        [
            [s.id, s.name, formats.get(s.format, "?"), "yes" if s.enabled else "no",
             "yes" if s.has_secret else "no", s.url, _filters_text(s)]
            for s in subs
        ],
    )  # fmt: skip


def _state(d: npb.Delivery) -> str:
    return npb.DeliveryState.Name(d.state).removeprefix("DELIVERY_STATE_").lower()


def format_deliveries(deliveries: Sequence[npb.Delivery]) -> list[str]:
    rows = []
    for d in deliveries:
        last = d.attempts[-1] if d.attempts else None
        rows.append(
            [
                d.id,
                d.create_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"),
                d.event_type,
                str(d.revision),
                _state(d),
                str(len(d.attempts)),
                str(last.http_status or "-") if last else "-",
                (last.error if last else "")[:60],
            ]
        )
    return table(["ID", "CREATED", "EVENT", "REV", "STATE", "TRIES", "HTTP", "ERROR"], rows)


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def cmd_add(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    client = _client(settings)
    sub = client.create_subscription(
        args.name,
        args.url,
        format=args.format,
        secret=_secret(args, env) or "",
        products=args.product or (),
        environments=args.env or (),
        environment_types=args.env_type or (),
        event_types=args.event or (),
        enabled=not args.disabled,
    )
    if args.json:
        print(dump(to_json(sub)))
    else:
        print(f"subscription {sub.name} created: {sub.id}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    subs = _client(settings).list_subscriptions()
    if args.json:
        print(dump([to_json(s) for s in subs]))
    elif subs:
        _print(format_subscriptions(subs))
    else:
        print("no subscriptions")
    return EXIT_OK


def cmd_update(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    client = _client(settings)
    sub = _subscription(client, args.subscription)
    changes: dict[str, Any] = {}
    for option in ("name", "url", "format"):
        if getattr(args, option) is not None:
            changes[option] = getattr(args, option)
    for option, field in _FILTERS.items():
        if getattr(args, option):
            changes[field] = getattr(args, option)
    for option in args.clear or ():
        changes[_FILTERS[option.replace("-", "_")]] = ()
    secret = _secret(args, env)
    if secret is not None:
        changes["secret"] = secret
    if args.no_secret:
        changes["secret"] = ""
    if args.enable or args.disable:
        changes["enabled"] = bool(args.enable)
    if not changes:
        raise UsageError("nothing to change: give at least one option")
    updated = client.update_subscription(sub.id, **changes)
    if args.json:
        print(dump(to_json(updated)))
    else:
        _print(format_subscriptions([updated]))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    client = _client(settings)
    sub = _subscription(client, args.subscription)
    client.delete_subscription(sub.id)
    print(f"subscription {sub.name} deleted")
    return EXIT_OK


def cmd_deliveries(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    client = _client(settings)
    sid = _subscription(client, args.subscription).id if args.subscription else ""
    found = []
    for delivery in client.deliveries(sid, page_size=min(max(args.limit, 1), 1000)):
        found.append(delivery)
        if args.limit and len(found) >= args.limit:
            break
    if args.json:
        print(dump([to_json(d) for d in found]))
    elif found:
        _print(format_deliveries(found))
    else:
        print("no deliveries")
    return EXIT_OK


def cmd_redeliver(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    copy = _client(settings).redeliver(args.delivery)
    print(f"queued again as delivery {copy.id}")
    return EXIT_OK


def cmd_test(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    client = _client(settings)
    delivery = client.send_test(_subscription(client, args.subscription).id)
    if args.json:
        print(dump(to_json(delivery)))
        return EXIT_OK
    attempt = delivery.attempts[0] if delivery.attempts else None
    status = attempt.http_status if attempt else 0
    if delivery.state == npb.DELIVERY_STATE_SUCCEEDED:
        print(f"test delivered: HTTP {status} (delivery {delivery.id})")
        return EXIT_OK
    error = attempt.error if attempt else "no attempt"
    print(f"versioner: test failed: {error} (delivery {delivery.id})", file=sys.stderr)
    return 1


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--product", action="append", help="only this product (repeatable)")
    parser.add_argument("--env", action="append", help="only this environment (repeatable)")
    parser.add_argument(
        "--env-type", action="append", choices=sorted(ENVIRONMENT_TYPES),
        help="only this environment type (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--event", action="append", choices=EVENT_TYPES, metavar="EVENT_TYPE",
        help=f"only this event type (repeatable): {', '.join(EVENT_TYPES)}",
    )  # fmt: skip


def _secret_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--secret-env", metavar="VAR",
        help="sign webhooks with the secret in environment variable VAR (16+ bytes)",
    )  # fmt: skip
    group.add_argument(
        "--secret-stdin", action="store_true", help="read the signing secret from stdin"
    )
    return group


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: Sequence[argparse.ArgumentParser] = (),
) -> None:
    """Add `notify` and its subcommands to the `versioner` parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    notify = subparsers.add_parser(
        "notify", help="webhook and Slack notifications", description=__doc__,
        formatter_class=formatter,
    )  # fmt: skip
    sub = notify.add_subparsers(dest="notify_command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=list(parents))

    add_ = add("add", "subscribe a webhook or Slack URL to deployment events")
    add_.add_argument("--name", required=True, help="a unique name, e.g. prod-slack")
    add_.add_argument("--url", required=True, help="http(s) URL to POST to")
    add_.add_argument("--format", choices=sorted(FORMATS), default="webhook")
    _filter_arguments(add_)
    _secret_arguments(add_)
    add_.add_argument("--disabled", action="store_true", help="create it disabled")
    add_.add_argument("--json", action="store_true", help="print JSON")
    add_.set_defaults(handler=cmd_add)

    list_ = add("list", "list subscriptions (secrets are never shown)")
    list_.add_argument("--json", action="store_true", help="print JSON")
    list_.set_defaults(handler=cmd_list)

    update = add("update", "change a subscription (only the options given)")
    update.add_argument("subscription", help="id or name")
    update.add_argument("--name")
    update.add_argument("--url")
    update.add_argument("--format", choices=sorted(FORMATS))
    _filter_arguments(update)
    update.add_argument(
        "--clear", action="append", choices=["product", "env", "env-type", "event"],
        help="drop that filter (match everything), repeatable",
    )  # fmt: skip
    secret = _secret_arguments(update)
    secret.add_argument("--no-secret", action="store_true", help="stop signing")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", action="store_true", help="deliver again (from now on)")
    state.add_argument("--disable", action="store_true", help="stop delivering")
    update.add_argument("--json", action="store_true", help="print JSON")
    update.set_defaults(handler=cmd_update)

    rm = add("rm", "delete a subscription and its delivery log")
    rm.add_argument("subscription", help="id or name")
    rm.set_defaults(handler=cmd_rm)

    deliveries = add("deliveries", "recent deliveries, newest first, with their attempts")
    deliveries.add_argument("--subscription", help="only this subscription (id or name)")
    deliveries.add_argument("--limit", type=int, default=20, help="at most N (default 20)")
    deliveries.add_argument("--json", action="store_true", help="print JSON with every attempt")
    deliveries.set_defaults(handler=cmd_deliveries)

    redeliver = add("redeliver", "send a delivery's event again (as a new delivery)")
    redeliver.add_argument("delivery", help="delivery id (X-Versioner-Delivery)")
    redeliver.set_defaults(handler=cmd_redeliver)

    test = add("test", "send a test message now and show the receiver's answer")
    test.add_argument("subscription", help="id or name")
    test.add_argument("--json", action="store_true", help="print JSON")
    test.set_defaults(handler=cmd_test)
