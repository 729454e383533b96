"""What operators of the operator see: the metrics registry (process_*, no ``_created``,
the per-credential gauges the alerts read), structured JSON logs, and the chart's
Grafana dashboard against a real ``/metrics`` exposition.

The controller runs in-process on the fakes of ``tests.fake_kube`` (in-memory
Kubernetes, a MockTransport token endpoint, an injected clock) with credentials in
different states: ready, failing, suspended.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest

from itcare_operator.health import HttpServers
from itcare_operator.logs import JsonFormatter, Resource, ResourceFields, about, fields
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import Controller
from itcare_operator.settings import Settings
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints
from tests.environment import free_port
from tests.fake_kube import URL, Clock, FakeKube, feed_source

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "charts" / "itcare-token-operator" / "files" / "grafana-dashboard.json"
NS = "team-a"
# Distinctive values, so that finding one in a log line cannot be a coincidence.
CLIENT_ID = "client-id-5e1f0c9a"
CLIENT_SECRET = "client-secret-9b27d4e6"
GOOD_ID = "good-client-3c8e"
TOKEN_PREFIX = "access-token-a41f7d"


class Operator:
    """A controller, its metrics, and three credentials: ``good`` (gets tokens),
    ``rejected`` (the endpoint answers 401), ``paused`` (suspended)."""

    def __init__(self) -> None:
        self.kube, self.clock, self.metrics = FakeKube(), Clock(), Metrics()
        self.issued: list[str] = []
        transport = httpx.MockTransport(self._endpoint)
        endpoints = TokenEndpoints(
            lambda url, ca: TokenEndpoint(url, transport=transport, clock=self.clock)
        )
        self.controller = Controller(
            Settings(),
            self.kube,  # type: ignore[arg-type]
            endpoints,
            self.metrics,
            clock=self.clock,
            rand=lambda: 0.0,
        )
        self._source("good-account", GOOD_ID)
        self._source("bad-account", CLIENT_ID)
        self._credential("good", "good-account")
        self._credential("rejected", "bad-account")
        self._credential("paused", "good-account", suspend=True)

    def _endpoint(self, request: httpx.Request) -> httpx.Response:
        user = base64.b64decode(request.headers["authorization"].split()[1]).decode()
        if user.startswith(CLIENT_ID + ":"):
            return httpx.Response(
                401, json={"error": "unauthorized_client", "error_description": "Invalid secret"}
            )
        self.issued.append(f"{TOKEN_PREFIX}-{len(self.issued)}")
        return httpx.Response(
            200,
            json={"access_token": self.issued[-1], "expires_in": 1200, "token_type": "bearer"},
        )

    def _source(self, name: str, client_id: str) -> None:
        secret = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{name}",
                "labels": {"itcare.cegedim.cloud/api-account": "true"},
            },
            "data": {
                "client-id": base64.b64encode(client_id.encode()).decode(),
                "client-secret": base64.b64encode(CLIENT_SECRET.encode()).decode(),
            },
        }
        self.kube.put(NS, secret)
        feed_source(self.controller, None, secret)

    def _credential(self, name: str, source: str, *, suspend: bool = False) -> None:
        body = {
            "metadata": {"namespace": NS, "name": name, "uid": f"uid-{name}", "generation": 1},
            "spec": {
                "clientSecretRef": {"name": source},
                "tokenURL": URL,
                "targetSecret": {"name": f"{name}-token"},
                "suspend": suspend,
            },
        }
        # Stored in the fake API server: a status patch of an unknown one is a 404.
        self.controller.credential_event(None, self.kube.apply_credential(body))
        self.kube.take_pending()

    async def reconcile(self, name: str) -> None:
        await self.controller._reconcile_key((NS, name))

    async def reconcile_all(self) -> None:
        for name in ("good", "rejected", "paused"):
            await self.reconcile(name)

    def sample(self, metric: str, name: str) -> float | None:
        labels = {"namespace": NS, "name": name, "scope": "namespaced"}
        return self.metrics.registry.get_sample_value(metric, labels)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The operator's JSON log lines, as ``configure_logging("json", ...)`` writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ResourceFields())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# -- metrics -----------------------------------------------------------------------------


def test_process_metrics_and_no_created_series() -> None:
    metrics = Metrics()
    metrics.refreshed(NS, "billing", "ClientCredentials")
    metrics.observe_request(0.1, ok=True)
    text = generate_latest(metrics.registry).decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        value = metrics.registry.get_sample_value(name)
        assert value is not None and value > 0, name
    assert "_created" not in text  # no creation-time series doubling every counter


async def test_gauges_the_alerts_read() -> None:
    op = Operator()
    await op.reconcile_all()
    gauges = {
        "itcare_credential_ready": {"good": 1, "rejected": 0, "paused": 0},
        # These two exist only while non-zero (cheaper at 10,000 credentials).
        "itcare_credential_suspended": {"good": None, "rejected": None, "paused": 1},
        "itcare_credential_consecutive_failures": {"good": None, "rejected": 1, "paused": None},
        "itcare_token_lifetime_seconds": {"good": 1200, "rejected": None, "paused": None},
    }
    for metric, expected in gauges.items():
        assert {n: op.sample(metric, n) for n in expected} == expected, metric
    # The failure streak grows with each failed attempt, and a success ends it.
    op.clock.now += dt.timedelta(hours=1)
    await op.reconcile("rejected")
    assert op.sample("itcare_credential_consecutive_failures", "rejected") == 2
    feed_source(op.controller, None, _relabelled(op, "bad-account", GOOD_ID))
    await op.reconcile("rejected")
    assert op.sample("itcare_credential_consecutive_failures", "rejected") is None
    assert op.sample("itcare_token_lifetime_seconds", "rejected") == 1200
    # A deleted credential takes its series along.
    op.controller.credential_event("DELETED", {"metadata": {"namespace": NS, "name": "paused"}})
    for metric in gauges:
        assert op.sample(metric, "paused") is None, metric


def _relabelled(op: Operator, name: str, client_id: str) -> dict[str, Any]:
    """The source Secret ``name`` with a new client id (as a watch event delivers it)."""
    secret = copy.deepcopy(op.kube.secrets[(NS, name)])
    secret["data"]["client-id"] = base64.b64encode(client_id.encode()).decode()
    op.kube.put(NS, secret)
    return secret


# -- logs --------------------------------------------------------------------------------


async def test_json_log_lines_carry_the_resource_event_and_reason(json_log: io.StringIO) -> None:
    op = Operator()
    await op.reconcile_all()
    op.controller.credential_event("DELETED", {"metadata": {"namespace": NS, "name": "good"}})
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    core = {"itcare_operator.reconciler", "itcare_operator.registry"}
    ours = [line for line in lines if line["logger"] in core]
    assert ours, lines
    for line in ours:
        assert line["kind"] == "ITCareCredential" and line["namespace"] == NS, line
        assert line["name"] in {"good", "rejected", "paused"} and line["event"], line
        assert {"time", "level", "message"} <= set(line), line
    by_event = {(line["name"], line["event"]): line for line in ours}
    assert by_event[("good", "TokenRefreshed")]["level"] == "info"
    failed = by_event[("rejected", "RefreshFailed")]
    assert failed["reason"] == "UnauthorizedClient" and failed["level"] == "warning"
    assert ("good", "CredentialDeleted") in by_event


async def test_no_secret_in_any_log_line(json_log: io.StringIO) -> None:
    op = Operator()
    await op.reconcile_all()
    op.clock.now += dt.timedelta(seconds=801)  # past the refresh point: a second token
    await op.reconcile_all()
    text = json_log.getvalue()
    assert len(op.issued) >= 2 and "RefreshFailed" in text
    for secret in (CLIENT_ID, CLIENT_SECRET, GOOD_ID, TOKEN_PREFIX, *op.issued):
        assert secret not in text
    for encoded in (CLIENT_SECRET, CLIENT_ID, op.issued[0]):
        assert base64.b64encode(encoded.encode()).decode() not in text


def test_lines_outside_a_reconcile_name_no_resource(json_log: io.StringIO) -> None:
    log = logging.getLogger("itcare_operator.test")
    with about(Resource("ITCareCredential", NS, "a")):
        log.info("inside")
    log.info("outside", extra=fields("Started"))
    log.info(
        "explicit", extra=fields("Deleted", resource=Resource("ClusterITCareCredential", "", "b"))
    )
    inside, outside, explicit = (json.loads(x) for x in json_log.getvalue().splitlines())
    assert (inside["kind"], inside["namespace"], inside["name"]) == ("ITCareCredential", NS, "a")
    assert "kind" not in outside and "name" not in outside and outside["event"] == "Started"
    assert (explicit["kind"], explicit["namespace"], explicit["name"]) == (
        "ClusterITCareCredential",
        "",
        "b",
    )


# -- the Grafana dashboard ---------------------------------------------------------------

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def queried_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords, label names and
    Grafana variables left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(\s*\()?", expr):
        if match.group(2) is None and match.group(1).lower() not in _PROMQL_WORDS:
            names.add(match.group(1))
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert inner, variable["definition"]
            exprs.append(inner.group(1))
    return exprs


def test_queried_metrics_parser() -> None:
    assert queried_metrics(
        'histogram_quantile(0.99, sum by (le, pod) (rate(x_bucket{job=~"$job"}[$__rate_interval])))'
    ) == {"x_bucket"}
    assert queried_metrics('count(a{n=~"$namespace"} == 1) or vector(0)') == {"a"}
    assert queried_metrics("bottomk(20, (b - time()) / on(name) c)") == {"b", "c"}


async def test_dashboard_queries_only_metrics_the_operator_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())  # parses
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Ready",
        "Total",
        "Tokens expiring soonest",
        "Refresh failures by reason",
        "Token request latency",
    ):
        assert wanted in titles
    op = Operator()
    await op.reconcile_all()
    op.clock.now += dt.timedelta(seconds=801)
    await op.reconcile_all()
    http = HttpServers(registry=op.metrics.registry, heartbeat=lambda: 0.0, ready=lambda: True)
    port = free_port()
    await http.start(0, port, host="127.0.0.1")
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await http.stop()
    assert response.status_code == 200
    exposed = set()
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            exposed.add(line.split()[2])  # a family, even before its first sample
        elif line and not line.startswith("#"):
            exposed.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    queried = set().union(*(queried_metrics(e) for e in dashboard_queries()))
    assert len(queried) >= 10, queried
    assert queried <= exposed, sorted(queried - exposed)
    # And the states it shows have samples here.
    for name in (
        "itcare_token_expiration_timestamp_seconds",
        "itcare_token_refresh_errors_total",
        "itcare_token_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert any(line.startswith(name) for line in response.text.splitlines()), name
