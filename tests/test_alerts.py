"""The chart's alert rules, proven with Prometheus's own tools.

``promtool test rules`` runs the rules *as helm renders them* over the input series
below (what the operator exports in each situation, sample by sample) and compares
the firing alerts, with their labels and annotations, to the expected table: each
rule has firing and not-firing cases. ``promtool check rules`` checks the rendered
groups of every CI values file.

promtool is built from the Prometheus Go module by ``scripts/build-promtool``; helm
by ``scripts/build-components``. Without them these tests skip locally and fail under
``CI=true``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from itcare_operator import __version__
from tests.environment import CACHE, component_paths, versions

pytestmark = pytest.mark.env

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "itcare-token-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NS = "team-a"

Series = Callable[[int], float | str | None]  # seconds since start -> value, "stale" or None


def binary(path: Path, build: str) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing; build it with {build}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def promtool() -> Path:
    return binary(
        CACHE / f"promtool-{versions()['PROMETHEUS_VERSION']}" / "promtool",
        "scripts/build-promtool",
    )


@pytest.fixture(scope="module")
def helm() -> Path:
    return binary(component_paths()["helm"], "scripts/build-components helm")


def rendered_groups(helm: Path, *args: str) -> list[dict[str, Any]]:
    """The PrometheusRule's groups as ``helm template`` renders them."""
    out = subprocess.run(
        [str(helm), "template", "itop", str(CHART), "--namespace", "itcare-system", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


# -- input series ------------------------------------------------------------------------
# What the operator exports for one credential. ``None``: no series at that instant;
# ``"stale"``: the series ends there (the operator process went away).


@dataclasses.dataclass
class Credential:
    expiration: Series = lambda t: None
    lifetime: Series = lambda t: None
    next_refresh: Series = lambda t: None
    failures: Series = lambda t: 0
    ready: Series = lambda t: 1
    suspended: Series = lambda t: 0
    # This process's counters, which the alerts no longer read (kept for comparison):
    # failed attempts by reason, and successful ones.
    errors: Series = lambda t: None
    successes: Series = lambda t: None


def rotation(lifetime: int, margin: int) -> Credential:
    """A healthy rotation: a new token every ``lifetime - margin`` seconds, each scrape at
    a refresh point seeing the old token (the least time left a scrape can see)."""
    period = lifetime - margin

    def token(t: int) -> int:  # received at token(t) * period
        return max(0, math.ceil(t / period) - 1)

    return Credential(
        expiration=lambda t: token(t) * period + lifetime,
        lifetime=lambda t: lifetime,
        next_refresh=lambda t: (token(t) + 1) * period,
    )


def failing_from(lifetime: int, first_failure: int, until: int | None = None) -> Credential:
    """One token received at 0; every attempt from ``first_failure`` on fails (a retry
    every 15 s) until ``until``, when a new token is obtained."""

    def recovered(t: int) -> bool:
        return until is not None and t >= until

    def failing(t: int) -> bool:
        return first_failure <= t and not recovered(t)

    return Credential(
        expiration=lambda t: (until or 0) + lifetime if recovered(t) else lifetime,
        lifetime=lambda t: lifetime,
        # While failing: the next retry. Else: the refresh point of the token held.
        next_refresh=lambda t: t + 15 if failing(t) else (until or 0) + first_failure,
        failures=lambda t: 1 + (t - first_failure) // 15 if failing(t) else 0,
        ready=lambda t: 1 if recovered(t) or t < lifetime else 0,
    )


def restarted() -> Credential:
    """Refreshes fail from the start; the operator restarts at 3m30s (its series end)
    and is back at 4m30s: the failure streak restarts from zero, no success ever."""

    def gap(t: int) -> str | None:
        return "stale" if t == 210 else None

    def up(t: int) -> bool:
        return t < 210 or t >= 270

    def failures(t: int) -> int | str | None:
        if not up(t):
            return gap(t)
        return 5 + t // 60 if t < 210 else 1 + (t - 300) // 60 if t >= 300 else 0

    return Credential(
        expiration=lambda t: 7200 if up(t) else gap(t),
        lifetime=lambda t: 7200 if up(t) else gap(t),
        next_refresh=lambda t: t + 30 if up(t) else gap(t),
        failures=failures,
        errors=failures,  # the counter restarts with the process, as the streak does
        ready=lambda t: 1 if up(t) else gap(t),
    )


# The operator exports these only while non-zero (a counter: once incremented).
SPARSE = {"failures", "suspended", "errors", "successes"}


def render_series(creds: dict[str, Credential], step: int, end: int) -> list[dict[str, str]]:
    out = []
    metrics = {
        "itcare_token_expiration_timestamp_seconds": "expiration",
        "itcare_token_lifetime_seconds": "lifetime",
        "itcare_token_next_refresh_timestamp_seconds": "next_refresh",
        "itcare_credential_consecutive_failures": "failures",
        "itcare_credential_ready": "ready",
        "itcare_credential_suspended": "suspended",
        'itcare_token_refresh_errors_total{reason="UnauthorizedClient", ': "errors",
        'itcare_token_refresh_total{result="success", grant="ClientCredentials", ': "successes",
    }
    for name, cred in creds.items():
        for metric, field in metrics.items():
            fn: Series = getattr(cred, field)
            values = [fn(t) for t in range(0, end + 1, step)]
            if field in SPARSE:
                values = [None if v == 0 else v for v in values]
            # A series gone from a scrape gets a staleness marker, then nothing.
            values = [
                "stale" if v is None and i and values[i - 1] not in (None, "stale") else v
                for i, v in enumerate(values)
            ]
            if all(v is None for v in values):
                continue
            text = " ".join("_" if v is None else str(v) for v in values)
            labels = f'namespace="{NS}", name="{name}", scope="namespaced"}}'
            selector = metric + labels if metric.endswith(" ") else f"{metric}{{{labels}"
            out.append({"series": selector, "values": text})
    return out


# -- expected alerts ---------------------------------------------------------------------


RUNBOOK = (
    "https://github.com/itcare-token-operator/itcare-token-operator"
    f"/blob/v{__version__}/docs/troubleshooting.md"
)


def runbook(alert: str) -> str:
    """The alert's ``runbook_url``: its entry in the troubleshooting document of this
    release."""
    return f"{RUNBOOK}#{alert.lower()}"


def cred_labels(name: str, severity: str) -> dict[str, str]:
    return {"namespace": NS, "name": name, "scope": "namespaced", "severity": severity}


def expiring(name: str, remaining: str | None) -> dict[str, Any]:
    """ITCareTokenExpiringSoon for ``name``; ``remaining`` as humanizeDuration prints it,
    ``None`` once the token has expired."""
    when = f"expires in {remaining}" if remaining is not None else "has expired"
    return {
        "exp_labels": cred_labels(name, "critical"),
        "exp_annotations": {
            "summary": f"ITCare token of {NS}/{name} {when} and is not being replaced",
            "description": "Less than 25% of the token's lifetime is left and its refreshes "
            f"fail (or are overdue). See `kubectl -n {NS} describe itccred {name}`.",
            "runbook_url": runbook("ITCareTokenExpiringSoon"),
        },
    }


def refresh_failing(name: str) -> dict[str, Any]:
    return {
        "exp_labels": cred_labels(name, "warning"),
        "exp_annotations": {
            "summary": f"Token refreshes of {NS}/{name} have failed for 10 minutes",
            "description": "The Refreshed condition gives the reason. "
            f"See `kubectl -n {NS} describe itccred {name}`.",
            "runbook_url": runbook("ITCareTokenRefreshFailing"),
        },
    }


def not_ready(name: str) -> dict[str, Any]:
    return {
        "exp_labels": cred_labels(name, "warning"),
        "exp_annotations": {
            "summary": f"ITCareCredential {NS}/{name} has had no valid token for 5 minutes",
            "runbook_url": runbook("ITCareCredentialNotReady"),
        },
    }


@dataclasses.dataclass
class RuleTable:
    """One promtool test group: input credentials, then the firing alerts expected at
    each evaluation time (every other alert of the rule must be silent)."""

    alert: str
    credentials: dict[str, Credential]
    expected: dict[str, list[dict[str, Any]]]
    step: int = 15
    end: int = 25 * 60
    extra_series: list[dict[str, str]] = dataclasses.field(default_factory=list)

    def group(self) -> dict[str, Any]:
        return {
            "name": self.alert,
            "interval": f"{self.step}s",
            "input_series": render_series(self.credentials, self.step, self.end)
            + self.extra_series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": self.alert, "exp_alerts": alerts}
                for at, alerts in self.expected.items()
            ],
        }


EXPIRING_SOON = RuleTable(
    "ITCareTokenExpiringSoon",
    {
        # Healthy rotations never fire, whatever the lifetime or refresh margin.
        "healthy-120s": rotation(120, 60),
        "healthy-300s": rotation(300, 100),
        "healthy-1200s": rotation(1200, 400),
        "healthy-small-margin": rotation(1200, 60),  # refreshBeforeExpirySeconds: 60
        # Fails from its refresh point on: fires under a quarter of the lifetime
        # (30 s), and stays firing once expired.
        "failing-120s": failing_from(120, first_failure=60),
        # The documented ITCare lifetime: fires at 300 s before expiry.
        "failing-1200s": failing_from(1200, first_failure=800),
        # The operator stalls: no attempt, the planned refresh (at 800 s) overdue.
        "stalled": Credential(
            expiration=lambda t: 1200, lifetime=lambda t: 1200, next_refresh=lambda t: 800
        ),
        # Fails, then recovers at 975 s: fires, then resolves.
        "recovers": failing_from(1200, first_failure=800, until=975),
        # Suspended with a token that expires at 600 s and failures from before.
        "suspended": Credential(
            expiration=lambda t: 600,
            lifetime=lambda t: 1200,
            failures=lambda t: 2,
            ready=lambda t: 1 if t < 600 else 0,
            suspended=lambda t: 1,
        ),
    },
    {
        "1m30s": [],  # failing-120s: 30 s left, not less
        "1m45s": [expiring("failing-120s", "15s")],
        "5m": [expiring("failing-120s", None)],
        "14m": [expiring("failing-120s", None)],  # failing-1200s: 6 min left
        "15m": [expiring("failing-120s", None)],  # failing-1200s: 300 s left, not less
        "15m15s": [
            expiring("failing-120s", None),
            expiring("failing-1200s", "4m 45s"),
            expiring("recovers", "4m 45s"),
        ],
        "15m30s": [
            expiring("failing-120s", None),
            expiring("failing-1200s", "4m 30s"),
            expiring("recovers", "4m 30s"),
            expiring("stalled", "4m 30s"),  # 130 s past its refresh point
        ],
        "16m": [
            expiring("failing-120s", None),
            expiring("failing-1200s", "4m 0s"),
            expiring("stalled", "4m 0s"),
            expiring("recovers", "4m 0s"),
        ],
        "16m30s": [
            expiring("failing-120s", None),
            expiring("failing-1200s", "3m 30s"),
            expiring("stalled", "3m 30s"),
        ],
        "21m": [
            expiring("failing-120s", None),
            expiring("failing-1200s", None),
            expiring("stalled", None),
        ],
    },
)

REFRESH_FAILING = RuleTable(
    "ITCareTokenRefreshFailing",
    {
        # A new credential that never got a token (no success series exists).
        "new-failing": Credential(
            failures=lambda t: 1 + t // 60, ready=lambda t: 0, errors=lambda t: 1 + t // 60
        ),
        "restarted": restarted(),
        "suspended": Credential(
            failures=lambda t: 3, ready=lambda t: 0, suspended=lambda t: 1, errors=lambda t: 3
        ),
        # Fails for 5 minutes, then succeeds: never 10 minutes in a row.
        "recovers": Credential(
            failures=lambda t: 1 + t // 60 if t < 300 else 0,
            errors=lambda t: min(1 + t // 60, 5),
            successes=lambda t: 1 if t >= 300 else 0,
        ),
    },
    {
        "9m30s": [],
        "10m30s": [refresh_failing("new-failing")],
        "14m30s": [refresh_failing("new-failing")],  # restarted: failing since 5m only
        "15m30s": [refresh_failing("new-failing"), refresh_failing("restarted")],
        "20m": [refresh_failing("new-failing"), refresh_failing("restarted")],
    },
    step=30,
    end=20 * 60,
)

NOT_READY = RuleTable(
    "ITCareCredentialNotReady",
    {
        "expired": Credential(ready=lambda t: 1 if t < 120 else 0),
        "never-ready": Credential(ready=lambda t: 0, failures=lambda t: 1 + t // 60),
        "healthy": Credential(),
        "suspended": Credential(ready=lambda t: 0, suspended=lambda t: 1),
    },
    {
        "4m30s": [],
        "5m30s": [not_ready("never-ready")],
        "6m30s": [not_ready("never-ready")],  # expired: not ready since 2m only
        "7m30s": [not_ready("never-ready"), not_ready("expired")],
    },
    step=30,
    end=10 * 60,
)

OPERATOR_ABSENT = RuleTable(
    "ITCareTokenOperatorAbsent",
    {},
    {
        "7m30s": [],  # gone at 3m, absent for 4m30s
        "8m30s": [
            {
                "exp_labels": {"severity": "critical"},
                "exp_annotations": {
                    "summary": "itcare-token-operator metrics have been absent for 5 minutes; "
                    "tokens are not being refreshed",
                    "runbook_url": runbook("ITCareTokenOperatorAbsent"),
                },
            }
        ],
    },
    step=30,
    end=10 * 60,
    extra_series=[
        {"series": f'itcare_build_info{{version="{__version__}"}}', "values": "1x5 stale"}
    ],
)

TABLES = [EXPIRING_SOON, REFRESH_FAILING, NOT_READY, OPERATOR_ABSENT]


@pytest.fixture
def rules_file(helm: Path, tmp_path: Path) -> Path:
    groups = rendered_groups(helm, "--set", "prometheusRule.enabled=true,prometheusRule.force=true")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.alert)
def test_promtool_rule_table(
    promtool: Path, rules_file: Path, tmp_path: Path, table: RuleTable
) -> None:
    tests = tmp_path / "rules-test.yaml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [rules_file.name],
                "evaluation_interval": f"{table.step}s",
                "tests": [table.group()],
            },
            sort_keys=False,
        )
    )
    proc = subprocess.run(
        [str(promtool), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{tests}:\n{proc.stdout}{proc.stderr}"
    assert "SUCCESS" in proc.stdout


def test_every_rule_has_a_table(rules_file: Path) -> None:
    rules = yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {t.alert for t in TABLES}
    for table in TABLES:
        silent = [at for at, alerts in table.expected.items() if not alerts]
        firing = [at for at, alerts in table.expected.items() if alerts]
        assert silent and firing, f"{table.alert} needs firing and not-firing cases"


@pytest.mark.parametrize(
    "values", [None, *CI_VALUES], ids=lambda p: "forced-defaults" if p is None else p.name
)
def test_promtool_checks_the_rendered_rules(
    promtool: Path, helm: Path, tmp_path: Path, values: Path | None
) -> None:
    args = (
        ["-f", str(values), "--set", "prometheusRule.enabled=true,prometheusRule.force=true"]
        if values
        else ["--set", "prometheusRule.enabled=true,prometheusRule.force=true"]
    )
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered_groups(helm, *args)}))
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    """The Grafana dashboard's PromQL, Grafana's variables replaced, is valid PromQL."""
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    variables = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
    rules = []
    for i, expr in enumerate(exprs):
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout
