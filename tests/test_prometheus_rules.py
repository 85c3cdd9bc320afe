"""The Prometheus rules, alerts and config, and the Grafana dashboard in deploy/.

The rule checks run promtool (Debian: `apt-get install prometheus`); without it they are
skipped, loudly. The dashboard checks need nothing but the JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    from promql_exprs import (
        DASHBOARD,
        PROMETHEUS_DIR,
        REPO,
        RULE_FILES,
        dashboard_and_rule_expressions,
        dashboard_expressions,
        iter_panels,
        load_dashboard,
        rule_file_expressions,
        rule_text_expressions,
    )
except ImportError:  # tests/ imported as a package
    from tests.promql_exprs import (
        DASHBOARD,
        PROMETHEUS_DIR,
        REPO,
        RULE_FILES,
        dashboard_and_rule_expressions,
        dashboard_expressions,
        iter_panels,
        load_dashboard,
        rule_file_expressions,
        rule_text_expressions,
    )

RULES, ALERTS = RULE_FILES
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# What the server exports (DESIGN.md section 4), plus Prometheus' own `up`.
HISTOGRAMS = {
    "versioner_deployment_duration_seconds",
    "versioner_time_between_deployments_seconds",
    "versioner_lead_time_seconds",
    "versioner_time_to_restore_seconds",
    "grpc_server_handling_seconds",
    "versioner_approval_wait_seconds",
    "versioner_notification_delivery_seconds",
}
KNOWN_METRICS = {
    "up",
    "versioner_deployments_total",
    "versioner_rollbacks_total",
    "versioner_deployments_in_progress",
    "versioner_last_deployment_timestamp_seconds",
    "versioner_current_version_info",
    "versioner_build_info",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "versioner_rule_decisions_total",
    "versioner_approvals_pending",
    "versioner_approval_oldest_pending_seconds",
    "versioner_notification_deliveries_total",
    "versioner_notification_lag_seconds",
} | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

# Counted in each replica's memory, like the gRPC metrics: these are summed.
PER_REPLICA = ("versioner_notification_deliveries", "versioner_notification_delivery_seconds")

_RECORDED_NAME = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
_METRIC_NAME = re.compile(r"\b(?:versioner|grpc_server)_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "!!! promtool not installed (apt-get install prometheus): the Prometheus "
            "rule, alert and config checks did NOT run !!!"
        )
    return path


def run_promtool(promtool: str, *args: str | Path) -> str:
    result = subprocess.run(
        [promtool, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)\s*$", RULES.read_text(), re.M))


def alert_blocks() -> dict[str, str]:
    """Each alert's name and the text of its rule, from alerts.yml."""
    parts = re.split(r"^\s*- alert:\s*", ALERTS.read_text(), flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


# --- promtool -------------------------------------------------------------------------


def test_rule_files_are_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", RULES, ALERTS)


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert {path.name for path in RULE_TESTS} >= {
        "alerts_test.yml",
        "recording_rules_test.yml",
        "no_recent_deployment_test.yml",
    }
    run_promtool(promtool, "test", "rules", *RULE_TESTS)


def test_prometheus_config_is_valid(promtool: str) -> None:
    output = run_promtool(promtool, "check", "config", CONFIG)
    assert "2 rule files found" in output, output


def test_rule_reader_finds_every_rule(promtool: str) -> None:
    """The small YAML reader of promql_exprs sees as many rules as promtool does."""
    for path in RULE_FILES:
        output = run_promtool(promtool, "check", "rules", path)
        found = re.search(r"SUCCESS: (\d+) rules found", output)
        assert found, output
        assert len(rule_file_expressions(path)) == int(found[1]), path.name


def test_dashboard_expressions_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, variables substituted, is valid PromQL (promtool parses it)."""
    expressions = dashboard_expressions()
    rules = [
        {"record": f"dashboard:expression:{i}", "expr": expr}
        for i, (_, expr) in enumerate(expressions)
    ]
    path = tmp_path / "dashboard_rules.yml"
    # JSON is YAML: no YAML library needed.
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool(promtool, "check", "rules", path)
    assert f"{len(rules)} rules found" in output, output


# --- rules and alerts, as text ----------------------------------------------------------


def test_every_alert_is_named_labelled_annotated_and_tested() -> None:
    blocks = alert_blocks()
    assert set(blocks) >= {
        "VersionerDeploymentFailureRateHigh",
        "VersionerDeploymentStuck",
        "VersionerNoRecentProductionDeployment",
        "VersionerExporterDown",
        "VersionerExporterAbsent",
    }
    test_lines = [
        line.strip().removeprefix("- ")
        for path in RULE_TESTS
        for line in path.read_text().splitlines()
    ]
    for name, block in blocks.items():
        assert name.startswith("Versioner"), name
        for key in ("severity:", "summary:", "description:"):
            assert re.search(rf"^\s+{key}", block, re.M), f"{name} has no {key}"
        # Each alert_rule_test case: its `alertname`, then its `exp_alerts`.
        outcomes = set()
        for i, line in enumerate(test_lines):
            if line == f"alertname: {name}":
                exp = next(text for text in test_lines[i:] if text.startswith("exp_alerts:"))
                outcomes.add("silent" if exp == "exp_alerts: []" else "firing")
        assert outcomes == {"silent", "firing"}, f"{name}: tested {outcomes or 'never'}"


def test_expressions_use_known_metrics_and_recorded_series() -> None:
    recorded = recorded_names()
    assert recorded, "no recording rules found"
    for name in recorded:
        level, metric, operations = name.split(":")
        assert level and metric.startswith("versioner_") and operations, name
    for where, expr in dashboard_and_rule_expressions():
        for name in _RECORDED_NAME.findall(expr):
            assert name in recorded, f"{where}: {name} is not recorded in rules.yml"
        for name in _METRIC_NAME.findall(_RECORDED_NAME.sub("", expr)):
            assert name in KNOWN_METRICS, f"{where}: unknown metric {name}"


def test_recorded_series_are_read_in_their_own_group_below_their_rule() -> None:
    """Groups run concurrently: a rule reading a series recorded in another group, or
    later in its own, would see the previous evaluation's value or, at a wider
    interval than the lookback, nothing."""
    groups = re.split(r"^  - name:\s*", RULES.read_text(), flags=re.M)[1:]
    assert groups
    for group in groups:
        name = group.split("\n", 1)[0].strip()
        recorded_above: set[str] = set()
        for where, expr in rule_text_expressions(group, f"rules.yml group {name}"):
            for series in _RECORDED_NAME.findall(expr):
                assert series in recorded_above, f"{where} reads {series}"
            recorded_above.add(where.rsplit(" ", 1)[1])


# Counted by each replica for what it decided or attempted itself: these are summed.
PER_REPLICA_SERIES = (
    "versioner_rule_decisions_total",
    "versioner_approval_wait_seconds_bucket",
    *PER_REPLICA,
)


def test_deployment_metrics_are_deduplicated_across_replicas() -> None:
    """Deployment metrics are the same on every replica: never add them up raw."""
    for where, expr in dashboard_and_rule_expressions():
        if "versioner_" not in expr or re.search(r"\bsum\b", expr) is None:
            continue
        for selector in re.findall(r"\bversioner_[a-z_]+(?:_total|_bucket)\b", expr):
            if selector.startswith(PER_REPLICA_SERIES):
                continue  # counted by the replica that made the attempt: summed
            assert re.search(r"max (?:without|by)", expr), f"{where}: sums {selector} unmerged"


# --- the dashboard ----------------------------------------------------------------------


def test_dashboard_is_provisionable() -> None:
    text = DASHBOARD.read_text(encoding="utf-8")
    dashboard = load_dashboard()
    assert "${DS_" not in text
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert dashboard["uid"] == "versioner-deployments"
    assert dashboard["title"] == "Versioner — Deployments"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None


def test_dashboard_panels_use_the_datasource_variable() -> None:
    panels = list(iter_panels(load_dashboard()["panels"]))
    assert len(panels) > 10
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel.get("datasource") == DATASOURCE, title
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"{title}: no queries"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: duplicate refIds"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, title
            assert target.get("expr", "").strip(), f"{title}: empty expr"
    for annotation in load_dashboard()["annotations"]["list"]:
        assert annotation["datasource"] == DATASOURCE, annotation["name"]
        assert annotation["expr"].strip(), annotation["name"]


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("product", "environment"):
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["datasource"] == DATASOURCE, name
        assert variable["multi"] and variable["includeAll"], name
        assert variable["allValue"] == ".*", name
        assert variable["query"].startswith("label_values(versioner_current_version_info"), name
        assert variable["query"].endswith(f", {name})"), name


def test_dashboard_has_the_expected_panels() -> None:
    panels = {p["title"]: p for p in iter_panels(load_dashboard()["panels"])}

    table = panels["What runs where"]
    assert table["type"] == "table"
    info = table["targets"][0]
    assert info["instant"] and info["format"] == "table"
    assert "versioner_current_version_info" in info["expr"]
    for label in ("product", "environment", "environment_type", "version"):
        assert label in info["expr"], label

    dora = {
        "Deployment frequency": "product:versioner_dora_deployment_frequency:per_day7d",
        "Lead time for changes (median)": "product:versioner_dora_lead_time_seconds:p50_7d",
        "Change failure rate": "product:versioner_dora_change_failure:ratio7d",
        "Time to restore (median)": "product:versioner_dora_time_to_restore_seconds:p50_7d",
    }
    for title, series in dora.items():
        panel = panels[title]
        assert panel["type"] == "stat", title
        assert series in panel["targets"][0]["expr"], title
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert len(steps) == 4, f"{title}: one colour per DORA band"
        values = [step["value"] for step in steps[1:]]
        assert values == sorted(values), title

    bars = panels["Completed deployments per day, by environment"]
    assert bars["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    assert "Success rate" in panels and panels["Success rate"]["type"] == "stat"
    assert panels["Success rate (last 24 hours)"]["type"] == "timeseries"
    for title in (
        "Deployment duration (completed, last 24 hours)",
        "Time between deployments (median, last 7 days)",
        "Deployments in progress",
        "Rollbacks per day",
    ):
        assert panels[title]["type"] == "timeseries", title

    names = [a["name"] for a in load_dashboard()["annotations"]["list"]]
    assert "Deployments" in names
