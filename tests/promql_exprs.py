"""Every PromQL expression that deploy/ ships: the Grafana dashboard's and the rule files'.

``dashboard_and_rule_expressions()`` returns them as ``(where, expr)`` pairs, with the
dashboard's Grafana variables replaced by values that make plain PromQL, so a test can
parse them (promtool) or evaluate them against a real Prometheus.

No YAML library is needed: the rule files are read with a small reader for the subset of
YAML they use (``- record:`` / ``- alert:`` items whose ``expr`` is a plain scalar or a
``|`` block). It raises on anything else, and tests compare its rule count with promtool's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = (PROMETHEUS_DIR / "rules.yml", PROMETHEUS_DIR / "alerts.yml")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "versioner.json"

# What each Grafana variable becomes. `datasource` only appears in datasource fields.
GRAFANA_VARIABLES = {
    "product": ".*",
    "environment": ".*",
    "__rate_interval": "5m",
    "__range": "1d",
    "__interval": "1m",
}

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*\w+\s*\)\s*$", re.S)


def substitute_variables(expr: str) -> str:
    """Replaces the dashboard's variables; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in GRAFANA_VARIABLES:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(replace, expr)


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(where, expr) for every query of the dashboard: panels, annotations, variables."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            where = f"dashboard panel {panel.get('title')!r} query {target.get('refId')}"
            found.append((where, substitute_variables(target["expr"])))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr") or annotation.get("target", {}).get("expr")
        if expr:
            found.append(
                (f"dashboard annotation {annotation['name']!r}", substitute_variables(expr))
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        query = query.get("query", "") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query)
        if not match:
            raise ValueError(f"variable {variable['name']!r}: unexpected query {query!r}")
        found.append(
            (f"dashboard variable {variable['name']!r}", substitute_variables(match["selector"]))
        )
    return found


def rule_file_expressions(path: Path) -> list[tuple[str, str]]:
    """(where, expr) for every rule of a Prometheus rule file, in file order."""
    return rule_text_expressions(path.read_text(encoding="utf-8"), path.name)


def rule_text_expressions(text: str, filename: str) -> list[tuple[str, str]]:
    """(where, expr) for every rule in the text of (a part of) a rule file."""
    lines = text.splitlines()
    found: list[tuple[str, str]] = []
    rule_name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.strip()
        if stripped.startswith(("- record:", "- alert:")):
            rule_name = stripped.split(":", 1)[1].strip()
            continue
        if not stripped.startswith("expr:"):
            continue
        if rule_name is None:
            raise ValueError(f"{filename}:{i}: expr outside a rule")
        where = f"{filename} {rule_name}"
        value = stripped.split(":", 1)[1].strip()
        if value in ("|", "|-"):
            indent = len(line) - len(line.lstrip())
            block: list[str] = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i])
                i += 1
            body = [text for text in block if text.strip()]
            margin = min(len(text) - len(text.lstrip()) for text in body)
            expr = "\n".join(text[margin:] for text in block).strip()
        elif value and value[0] not in "|>\"'&*!%@`{[":
            expr = value
        else:
            raise ValueError(f"{filename}:{i}: unsupported expr form {value!r}")
        found.append((where, expr))
        rule_name = None
    return found


def rule_expressions() -> list[tuple[str, str]]:
    return [pair for path in RULE_FILES for pair in rule_file_expressions(path)]


def dashboard_and_rule_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression of the dashboard and the rule files."""
    return dashboard_expressions() + rule_expressions()


if __name__ == "__main__":
    for where, expr in dashboard_and_rule_expressions():
        print(f"# {where}\n{expr}\n")
