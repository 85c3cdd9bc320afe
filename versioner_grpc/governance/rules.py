"""Deployment rules: the rules file, and what they decide for one deployment attempt.

Pure: no I/O beyond reading the file, no gRPC, no SQL. What a decision needs from
the store (approvals, completions elsewhere, open deployments) comes through the
narrow `Facts` protocol, asked only for rules that match the attempt, so an
environment no rule covers costs one cached dictionary lookup.

File format (TOML), one `[[rule]]` table per rule:

    [[rule]]
    name = "prod-approval"          # unique
    kind = "approval"               # approval | freeze | flow | concurrency
    mode = "enforce"                # enforce (default) | report | off
    environment_types = ["production"]
    required_approvals = 1

A scope field left out matches everything; given, every given field must match
(environment names or globs, environment types, product names or globs).

Recurring freeze windows are computed in local wall-clock time of `timezone`:
`schedule = "0 18 * * FRI"`, `duration = "62h"` in Europe/Berlin ends Monday 08:00
local time even when the clocks change over that weekend.
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from versioner_grpc.domain.environments import environment_type
from versioner_grpc.domain.model import EnvironmentType

US = 1_000_000
KINDS = ("approval", "freeze", "flow", "concurrency")
MODES = ("enforce", "report", "off")
_SCOPE_FIELDS = {"name", "kind", "mode", "environments", "environment_types", "products"}
_KIND_FIELDS = {
    "approval": {"required_approvals", "allow_self_approval", "approval_ttl", "description"},
    "freeze": {"start", "end", "schedule", "duration", "timezone", "reason", "description"},
    "flow": {"requires", "requires_types", "soak", "description"},
    "concurrency": {"description"},
}
_TYPES = {t.name.lower(): t for t in EnvironmentType if t is not EnvironmentType.UNSPECIFIED}
_DURATION = re.compile(r"(\d+)(d|h|m|s)")
_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_PLACE_CACHE = 8192


class RulesError(ValueError):
    """The rules file is unusable; the message names the file, the rule and the reason."""


class Outcome(enum.Enum):
    PASS = "pass"
    BLOCK = "block"
    REPORT = "report"


@dataclass(frozen=True)
class Scope:
    environments: tuple[str, ...] = ()
    environment_types: frozenset[EnvironmentType] = frozenset()
    products: tuple[str, ...] = ()

    def covers(self, product: str, environment: str, env_type: EnvironmentType) -> bool:
        if self.environments and not _any_match(environment, self.environments):
            return False
        if self.environment_types and env_type not in self.environment_types:
            return False
        return not self.products or _any_match(product, self.products)


@dataclass(frozen=True)
class Window:
    """A one-time freeze window, [start, end) in µs."""

    start: int
    end: int


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    mode: str
    scope: Scope
    line: int = 0
    # approval
    required_approvals: int = 1
    allow_self_approval: bool = False
    approval_ttl: int = 24 * 3600 * US
    # freeze
    window: Window | None = None
    schedule: str = ""
    duration: int = 0
    timezone: str = "UTC"
    reason: str = ""
    # flow
    requires: tuple[str, ...] = ()
    requires_types: frozenset[EnvironmentType] = frozenset()
    soak: int = 0


@dataclass(frozen=True)
class Target:
    """One deployment attempt: what would move into STARTED (or straight to COMPLETED)."""

    product: str
    version: str
    environment: str
    deployment_id: str = ""  # the deployment the event applies to, if it exists


@dataclass(frozen=True)
class ApprovalFact:
    """An open approval request (PENDING, or APPROVED and unexpired) for the target."""

    id: str
    state: str  # "PENDING" or "APPROVED"
    approvals: int
    expire_time: int


class Facts(Protocol):
    """What a decision needs from the store; asked only for matching rules."""

    def approvals(self, product: str, version: str, environment: str) -> Sequence[ApprovalFact]:
        """Open approval requests for the triple, newest first."""
        ...

    def completions(self, product: str, version: str) -> Sequence[tuple[str, int]]:
        """(environment, earliest end time) of every COMPLETED deployment of the version."""
        ...

    def open_deployment(self, product: str, environment: str, exclude_id: str) -> str | None:
        """The id of another PENDING or STARTED deployment of the product there."""
        ...


@dataclass(frozen=True)
class Result:
    """One rule's verdict on one attempt."""

    rule: Rule
    outcome: Outcome
    reason: str = ""  # ErrorInfo reason when not satisfied
    message: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after: int | None = None  # µs from now until it may pass
    approval_id: str = ""  # the APPROVED request that satisfied an approval rule


@dataclass(frozen=True)
class Verdict:
    results: tuple[Result, ...]

    @property
    def blocking(self) -> Result | None:
        return next((r for r in self.results if r.outcome is Outcome.BLOCK), None)

    @property
    def reported(self) -> tuple[Result, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.REPORT)

    @property
    def approval_id(self) -> str:
        return next((r.approval_id for r in self.results if r.approval_id), "")


@dataclass(frozen=True)
class ApprovalPolicy:
    """What an approval request for a target needs: the strictest matching rule wins."""

    required_approvals: int
    allow_self_approval: bool
    ttl: int
    rule_names: tuple[str, ...]


class RuleSet:
    """The loaded rules, with a cache of which rules cover each (product, environment)."""

    def __init__(self, rules: Sequence[Rule] = (), source: str = "", sha256: str = "") -> None:
        self.rules = tuple(rules)
        self.active = tuple(r for r in self.rules if r.mode != "off")
        self.source = source
        self.sha256 = sha256
        self._places: dict[tuple[str, str], tuple[Rule, ...]] = {}
        # Freeze decisions per rule with the span they hold for: a cron window is
        # computed again only when that span ends, not on every event.
        self._windows: dict[str, tuple[int | None, int, int]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def covering(self, product: str, environment: str) -> tuple[Rule, ...]:
        """The enforce/report rules whose scope covers the place (cached)."""
        key = (product, environment)
        found = self._places.get(key)
        if found is None:
            if not self.active:
                return ()
            env_type = environment_type(environment)
            found = tuple(r for r in self.active if r.scope.covers(product, environment, env_type))
            if len(self._places) >= _PLACE_CACHE:
                self._places.clear()
            self._places[key] = found
        return found

    def approval_policy(self, product: str, environment: str) -> ApprovalPolicy | None:
        rules = [r for r in self.covering(product, environment) if r.kind == "approval"]
        if not rules:
            return None
        return ApprovalPolicy(
            required_approvals=max(r.required_approvals for r in rules),
            allow_self_approval=all(r.allow_self_approval for r in rules),
            ttl=min(r.approval_ttl for r in rules),
            rule_names=tuple(r.name for r in rules),
        )

    def evaluate(self, target: Target, facts: Facts, now: int) -> Verdict:
        rules = self.covering(target.product, target.environment)
        if not rules:
            return Verdict(())
        windows = self._windows
        return Verdict(tuple(_evaluate(rule, target, facts, now, windows) for rule in rules))


# ---------------------------------------------------------------- evaluation


def _evaluate(
    rule: Rule,
    target: Target,
    facts: Facts,
    now: int,
    windows: dict[str, tuple[int | None, int, int]],
) -> Result:
    if rule.kind == "approval":
        found = _approval(rule, target, facts, now)
    elif rule.kind == "freeze":
        found = _freeze(rule, now, windows)
    elif rule.kind == "flow":
        found = _flow(rule, target, facts, now)
    else:
        found = _concurrency(rule, target, facts)
    if found.outcome is Outcome.BLOCK and rule.mode == "report":
        return Result(
            rule, Outcome.REPORT, found.reason, found.message, found.metadata, found.retry_after
        )
    return found


def _approval(rule: Rule, target: Target, facts: Facts, now: int) -> Result:
    pending: ApprovalFact | None = None
    best = 0
    for fact in facts.approvals(target.product, target.version, target.environment):
        if fact.expire_time <= now:
            continue
        if fact.state == "APPROVED" and fact.approvals >= rule.required_approvals:
            return Result(rule, Outcome.PASS, approval_id=fact.id)
        if pending is None and fact.state == "PENDING":
            pending = fact
        best = max(best, fact.approvals)
    metadata = {
        "rule_name": rule.name,
        "required_approvals": str(rule.required_approvals),
        "current_approvals": str(best),
    }
    where = f"{target.product} {target.version} in {target.environment}"
    if pending is not None:
        metadata["approval_id"] = pending.id
        message = (
            f"rule {rule.name!r}: {where} needs {rule.required_approvals} approval(s), "
            f"has {best}; approval request {pending.id} is pending: ask an approver to run "
            f"`versioner approvals approve {pending.id}`"
        )
    else:
        message = (
            f"rule {rule.name!r}: {where} needs {rule.required_approvals} approval(s); "
            "request one with `versioner approvals request` (or `versioner run "
            "--wait-for-approval`)"
        )
    return Result(rule, Outcome.BLOCK, "APPROVAL_REQUIRED", message, metadata)


def freeze_window_end(rule: Rule, now: int) -> int | None:
    """The end (µs) of the freeze window `now` is in, or None outside every window."""
    return freeze_state(rule, now)[0]


def freeze_state(rule: Rule, now: int) -> tuple[int | None, int, int]:
    """(window end or None, valid from, valid until): the answer holds in [from, until)."""
    if rule.window is not None:
        start, end = rule.window.start, rule.window.end
        if now < start:
            return None, -(2**62), start
        if now < end:
            return end, start, end
        return None, end, 2**62
    tz = ZoneInfo(rule.timezone)
    aware_now = dt.datetime.fromtimestamp(now / US, tz)
    local_now = aware_now.replace(tzinfo=None)
    # The most recent fire time (croniter's get_prev excludes an exact match).
    start_local = croniter(rule.schedule, local_now + dt.timedelta(seconds=1)).get_prev(dt.datetime)
    # The duration runs in local wall-clock time: DST changes move the UTC end.
    end_local = start_local + dt.timedelta(microseconds=rule.duration)
    start = int(start_local.replace(tzinfo=tz).timestamp() * US)
    end = int(end_local.replace(tzinfo=tz).timestamp() * US)
    if start <= now < end:
        return end, start, end
    next_local = croniter(rule.schedule, local_now).get_next(dt.datetime)
    next_start = int(next_local.replace(tzinfo=tz).timestamp() * US)
    return None, max(end, start), max(next_start, now + 1)


def _freeze(rule: Rule, now: int, cache: dict[str, tuple[int | None, int, int]]) -> Result:
    cached = cache.get(rule.name)
    if cached is None or not cached[1] <= now < cached[2]:
        cached = cache[rule.name] = freeze_state(rule, now)
    end = cached[0]
    if end is None:
        return Result(rule, Outcome.PASS)
    end_text = rfc3339(end)
    why = f" ({rule.reason})" if rule.reason else ""
    message = (
        f"rule {rule.name!r}: no deploys until {end_text}{why}; retry after the window ends "
        "or, in an emergency, record with an override_reason"
    )
    metadata = {
        "rule_name": rule.name,
        "window_end": end_text,
        "retry_after": str(max(1, -(-(end - now) // US))),
    }
    return Result(rule, Outcome.BLOCK, "NO_DEPLOY_WINDOW", message, metadata, end - now)


def _flow(rule: Rule, target: Target, facts: Facts, now: int) -> Result:
    completions = [
        (env, end) for env, end in facts.completions(target.product, target.version)
        if env != target.environment
    ]  # fmt: skip
    needs: list[tuple[str, list[int]]] = []
    for pattern in rule.requires:
        needs.append((pattern, [end for env, end in completions if _match(env, pattern)]))
    for env_type in sorted(rule.requires_types):
        ends = [end for env, end in completions if environment_type(env) == env_type]
        needs.append((env_type.name.lower(), ends))
    worst_wait = 0
    for required, ends in needs:
        if not ends:
            message = (
                f"rule {rule.name!r}: deploy {target.product} {target.version} to "
                f"{required} first (it has not completed there)"
            )
            metadata = {"rule_name": rule.name, "missing_environment": required}
            return Result(rule, Outcome.BLOCK, "FLOW_VIOLATION", message, metadata)
        worst_wait = max(worst_wait, min(ends) + rule.soak - now)
    if worst_wait > 0:
        seconds = max(1, -(-worst_wait // US))
        message = (
            f"rule {rule.name!r}: {target.product} {target.version} must soak "
            f"{format_duration(rule.soak)} in {', '.join(n for n, _ in needs)} first; "
            f"retry in {format_duration(seconds * US)}"
        )
        metadata = {"rule_name": rule.name, "retry_after": str(seconds)}
        return Result(rule, Outcome.BLOCK, "INSUFFICIENT_SOAK_TIME", message, metadata, worst_wait)
    return Result(rule, Outcome.PASS)


def _concurrency(rule: Rule, target: Target, facts: Facts) -> Result:
    other = facts.open_deployment(target.product, target.environment, target.deployment_id)
    if other is None:
        return Result(rule, Outcome.PASS)
    message = (
        f"rule {rule.name!r}: deployment {other} of {target.product} is still open in "
        f"{target.environment}; finish or abort it first"
    )
    metadata = {"rule_name": rule.name, "conflicting_deployment_id": other}
    return Result(rule, Outcome.BLOCK, "CONCURRENT_DEPLOYMENT", message, metadata)


def _match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _any_match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def rfc3339(us: int) -> str:
    return dt.datetime.fromtimestamp(us / US, dt.UTC).isoformat().replace("+00:00", "Z")


def format_duration(us: int) -> str:
    seconds = us // US
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


# ---------------------------------------------------------------- parsing


def load(path: str | Path) -> RuleSet:
    """Read and validate a rules file; RulesError names the file, rule and reason."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse(raw, str(path))


def parse(raw: bytes, source: str = "<rules>") -> RuleSet:
    try:
        text = raw.decode()
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise RulesError(f"{source}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: invalid TOML: {exc}") from exc
    unknown = set(data) - {"rule"}
    if unknown:
        raise RulesError(f"{source}: unknown top-level key(s) {sorted(unknown)}; expected [[rule]]")
    entries = data.get("rule", [])
    if not isinstance(entries, list):
        raise RulesError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    lines = [i + 1 for i, t in enumerate(text.splitlines()) if t.strip().startswith("[[rule]]")]
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        line = lines[index] if index < len(lines) else 0
        where = f"{source}:{line}: rule {index + 1}" if line else f"{source}: rule {index + 1}"
        if not isinstance(entry, dict):
            raise RulesError(f"{where}: must be a table")
        name = entry.get("name")
        if isinstance(name, str) and name.strip():
            where += f" ({name!r})"
        rule = _rule(entry, where, line)
        if rule.name in seen:
            raise RulesError(f"{where}: duplicate rule name {rule.name!r} (first at rule "
                             f"{seen[rule.name] + 1})")  # fmt: skip
        seen[rule.name] = index
        rules.append(rule)
    return RuleSet(rules, source, hashlib.sha256(raw).hexdigest())


def _rule(entry: dict[str, Any], where: str, line: int) -> Rule:
    def fail(why: str) -> RulesError:
        return RulesError(f"{where}: {why}")

    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("'name' is required (a non-empty string)")
    if len(name) > 100 or any(ord(c) < 32 for c in name):
        raise fail("'name' must be at most 100 printable characters")
    kind = entry.get("kind")
    if kind is None:
        raise fail(f"'kind' is required: one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise fail(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    mode = entry.get("mode", "enforce")
    if mode not in MODES:
        raise fail(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    unknown = set(entry) - _SCOPE_FIELDS - _KIND_FIELDS[kind]
    if unknown:
        allowed = sorted((_SCOPE_FIELDS | _KIND_FIELDS[kind]) - {"description"})
        raise fail(
            f"unknown field(s) {', '.join(sorted(unknown))} for kind {kind!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    scope = Scope(
        environments=_globs(entry, "environments", fail),
        environment_types=_types(entry, "environment_types", fail),
        products=_globs(entry, "products", fail),
    )
    values: dict[str, Any] = {}
    if kind == "approval":
        required = entry.get("required_approvals", 1)
        if type(required) is not int or not 1 <= required <= 100:
            raise fail("'required_approvals' must be an integer from 1 to 100")
        allow_self = entry.get("allow_self_approval", False)
        if not isinstance(allow_self, bool):
            raise fail("'allow_self_approval' must be true or false")
        ttl = _duration(entry.get("approval_ttl", "24h"), "approval_ttl", fail)
        if ttl <= 0:
            raise fail("'approval_ttl' must be positive")
        values.update(required_approvals=required, allow_self_approval=allow_self, approval_ttl=ttl)
    elif kind == "freeze":
        values.update(_freeze_fields(entry, fail))
    elif kind == "flow":
        requires = _globs(entry, "requires", fail)
        requires_types = _types(entry, "requires_types", fail)
        if not requires and not requires_types:
            raise fail("a flow rule needs 'requires' (environments) or 'requires_types'")
        soak = _duration(entry.get("soak", "0s"), "soak", fail)
        values.update(requires=requires, requires_types=requires_types, soak=soak)
    return Rule(name=name, kind=kind, mode=mode, scope=scope, line=line, **values)


def _freeze_fields(entry: dict[str, Any], fail: Any) -> dict[str, Any]:
    reason = entry.get("reason", "")
    if not isinstance(reason, str):
        raise fail("'reason' must be a string")
    one_time = "start" in entry or "end" in entry
    recurring = "schedule" in entry or "duration" in entry
    if one_time and recurring:
        raise fail("a freeze is either one-time (start, end) or recurring (schedule, duration)")
    if one_time:
        if "start" not in entry or "end" not in entry:
            raise fail("a one-time freeze needs both 'start' and 'end'")
        if "timezone" in entry:
            raise fail("'timezone' applies to recurring freezes; give start/end with an offset")
        start = _instant(entry["start"], "start", fail)
        end = _instant(entry["end"], "end", fail)
        if end <= start:
            raise fail("'end' must be after 'start'")
        return {"window": Window(start, end), "reason": reason}
    if "schedule" not in entry or "duration" not in entry:
        raise fail("a freeze needs 'start' and 'end', or 'schedule' (cron) and 'duration'")
    schedule = entry["schedule"]
    if not isinstance(schedule, str) or not croniter.is_valid(schedule):
        raise fail(f"'schedule' {schedule!r} is not a valid cron expression")
    zone = entry.get("timezone", "UTC")
    try:
        if not isinstance(zone, str) or not zone:
            raise ValueError(zone)
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise fail(f"unknown time zone {zone!r} (use an IANA name such as Europe/Berlin)") from exc
    try:
        croniter(schedule, dt.datetime.now(tz).replace(tzinfo=None)).get_next(dt.datetime)
    except (CroniterBadDateError, CroniterBadCronError) as exc:
        raise fail(f"'schedule' {schedule!r} never fires") from exc
    duration = _duration(entry["duration"], "duration", fail)
    if duration <= 0:
        raise fail("'duration' must be positive")
    return {"schedule": schedule, "duration": duration, "timezone": zone, "reason": reason}


def _instant(value: Any, name: str, fail: Any) -> int:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise fail(f"'{name}' {value!r} is not an RFC 3339 date-time") from exc
    if not isinstance(value, dt.datetime):
        raise fail(f"'{name}' must be a date-time with an offset (RFC 3339)")
    if value.tzinfo is None:
        raise fail(f"'{name}' needs a UTC offset (e.g. 2026-12-24T00:00:00Z)")
    return int(value.timestamp() * US)


def _duration(value: Any, name: str, fail: Any) -> int:
    """'24h', '1h30m', '90s', '2d' (or an integer of seconds) → µs."""
    if type(value) is int and value >= 0:
        return value * US
    if isinstance(value, str) and value and _DURATION.sub("", value) == "":
        return sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(value)) * US
    raise fail(f"'{name}' {value!r} is not a duration such as 90s, 30m, 1h30m or 2d")


def _strings(entry: dict[str, Any], name: str, fail: Any) -> tuple[str, ...]:
    value = entry.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise fail(f"'{name}' must be a list of non-empty strings")
    return tuple(value)


def _globs(entry: dict[str, Any], name: str, fail: Any) -> tuple[str, ...]:
    patterns = _strings(entry, name, fail)
    for pattern in patterns:
        why = glob_problem(pattern)
        if why:
            raise fail(f"bad glob {pattern!r} in '{name}': {why}")
    return patterns


def glob_problem(pattern: str) -> str:
    """Why `pattern` is not a usable glob ('' when it is)."""
    if pattern != pattern.strip() or any(ord(c) < 32 for c in pattern):
        return "no surrounding spaces or control characters"
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            j += pattern[j : j + 1] == "!"
            j += pattern[j : j + 1] == "]"
            close = pattern.find("]", j)
            if close < 0:
                return "'[' without a closing ']'"
            i = close + 1
        elif pattern[i] == "]":
            return "']' without an opening '['"
        else:
            i += 1
    return ""


def _types(entry: dict[str, Any], name: str, fail: Any) -> frozenset[EnvironmentType]:
    found = set()
    for value in _strings(entry, name, fail):
        env_type = _TYPES.get(value.lower())
        if env_type is None:
            raise fail(f"unknown environment type {value!r} in '{name}'; expected one of "
                       f"{', '.join(_TYPES)}")  # fmt: skip
        found.add(env_type)
    return frozenset(found)
