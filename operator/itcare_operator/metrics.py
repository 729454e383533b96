"""Prometheus metrics of the public contract, on an injected registry.

Labels are namespace/name/scope/result/grant/reason/state only: never a token,
secret or client id. Per-credential series are removed when the credential is deleted.

The registry also carries the ``process_*`` series (memory, CPU, open file
descriptors), and counters expose no ``_created`` series: the creation time doubles
every counter's series count for a value no dashboard or alert of ours reads.

``scope`` tells the kinds apart: ``namespaced`` for an ITCareCredential, ``cluster``
for a ClusterITCareCredential (whose ``namespace`` label is empty, as for any
cluster-scoped object). Series are per credential, never per credential x namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from itcare_operator._version import __version__

__all__ = ["CLUSTER", "NAMESPACED", "Metrics"]

NAMESPACED = "namespaced"
CREDENTIAL_LABELS = ("namespace", "name", "scope")
CLUSTER = "cluster"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A process-wide switch of prometheus_client: the operator has one registry.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)

        self._series: dict[tuple[str, str, str], _Series] = {}
        r.register(_PerCredential(self._series))
        self.request_duration = Histogram(
            "itcare_token_request_duration_seconds",
            "Duration of token endpoint requests.",
            ["result"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
        )
        self.credentials = Gauge(
            "itcare_credentials",
            "Credentials by state.",
            ["state"],
            registry=r,
        )
        for state in ("ready", "not_ready", "suspended"):
            self.credentials.labels(state).set(0)
        self._counts: dict[str, tuple[int, int, int]] = {}
        self.loop_lag = Histogram(
            "itcare_event_loop_lag_seconds",
            "How late the operator's event loop runs a timer (responsiveness; sampled "
            "every 100 ms while reconciles run, every second otherwise).",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.kube_requests = Counter(
            "itcare_kube_requests_total",
            "Requests the operator made to the Kubernetes API (watches excluded).",
            ["verb", "resource"],
            registry=r,
        )
        self.object_errors = Counter(
            "itcare_object_errors_total",
            "Unexpected errors while handling one object (a watch event, a start-up "
            "listing item or a reconcile); the object is skipped or retried, the others "
            "go on. The log line names the object.",
            ["kind", "stage"],
            registry=r,
        )
        self.cluster_namespaces = Gauge(
            "itcare_cluster_credential_namespaces",
            "Namespaces of a ClusterITCareCredential by state (selected/synced/failed).",
            ["name", "state"],
            registry=r,
        )
        build = Gauge("itcare_build_info", "Build information.", ["version"], registry=r)
        build.labels(__version__).set(1)

    def observe_request(self, seconds: float, ok: bool) -> None:
        self.request_duration.labels("success" if ok else "failure").observe(seconds)

    def refreshed(self, namespace: str, name: str, grant: str, scope: str = NAMESPACED) -> None:
        self._of(namespace, name, scope).count(("success", grant))

    def failed(
        self, namespace: str, name: str, grant: str, reason: str, scope: str = NAMESPACED
    ) -> None:
        series = self._of(namespace, name, scope)
        series.count(("failure", grant))
        series.errors[reason] = series.errors.get(reason, 0.0) + 1

    def credential_state(
        self,
        namespace: str,
        name: str,
        *,
        ready: bool,
        expires_at: dt.datetime | None,
        next_refresh: dt.datetime | None,
        scope: str = NAMESPACED,
        lifetime: dt.timedelta | None = None,
        suspended: bool = False,
        failures: int = 0,
    ) -> None:
        """Publish one credential's state; a ``None`` (or a zero ``suspended`` or
        ``failures``) removes that series."""
        series = self._of(namespace, name, scope)
        series.ready = 1.0 if ready else 0.0
        series.suspended = 1.0 if suspended else None
        series.failures = float(failures) if failures else None
        series.expiration = expires_at.timestamp() if expires_at else None
        series.lifetime = lifetime.total_seconds() if lifetime is not None else None
        series.next_refresh = next_refresh.timestamp() if next_refresh else None

    def _of(self, namespace: str, name: str, scope: str) -> _Series:
        key = (namespace, name, scope)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        return series

    def namespaces(self, name: str, selected: int, synced: int, failed: int) -> None:
        self.cluster_namespaces.labels(name, "selected").set(selected)
        self.cluster_namespaces.labels(name, "synced").set(synced)
        self.cluster_namespaces.labels(name, "failed").set(failed)

    def set_counts(
        self, ready: int, not_ready: int, suspended: int, scope: str = NAMESPACED
    ) -> None:
        """``itcare_credentials`` counts both kinds: each reports its own part."""
        self._counts[scope] = (ready, not_ready, suspended)
        for i, state in enumerate(("ready", "not_ready", "suspended")):
            self.credentials.labels(state).set(sum(c[i] for c in self._counts.values()))

    def forget(self, namespace: str, name: str, scope: str = NAMESPACED) -> None:
        """Drop every series of a deleted credential."""
        self._series.pop((namespace, name, scope), None)
        if scope == CLUSTER:
            for state in ("selected", "synced", "failed"):
                _remove(self.cluster_namespaces, name, state)


@dataclasses.dataclass(slots=True)
class _Series:
    """One credential's series as plain numbers (``None``: absent). As labelled
    prometheus_client children they took 3.5 KB per credential: 34 MiB at 10,000."""

    ready: float | None = None
    expiration: float | None = None
    next_refresh: float | None = None
    lifetime: float | None = None
    suspended: float | None = None  # only while suspended
    failures: float | None = None  # only while failing
    refreshes: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    errors: dict[str, float] = dataclasses.field(default_factory=dict)  # by reason

    def count(self, result_grant: tuple[str, str]) -> None:
        self.refreshes[result_grant] = self.refreshes.get(result_grant, 0.0) + 1


_GAUGES = (  # (attribute, name, help)
    (
        "expiration",
        "itcare_token_expiration_timestamp_seconds",
        "Unix time the token in the target Secret expires.",
    ),
    (
        "next_refresh",
        "itcare_token_next_refresh_timestamp_seconds",
        "Unix time of the next scheduled refresh.",
    ),
    (
        "ready",
        "itcare_credential_ready",
        "1 when the credential's target Secret holds a valid token.",
    ),
    (
        "lifetime",
        "itcare_token_lifetime_seconds",
        "Lifetime the token in the target Secret was granted (expiry minus receive time).",
    ),
    # These two exist only while non-zero: at 10,000 credentials, zeros would add a
    # third to every scrape.
    (
        "suspended",
        "itcare_credential_suspended",
        "1 while the credential's spec.suspend is true (absent otherwise).",
    ),
    (
        "failures",
        "itcare_credential_consecutive_failures",
        "Refresh attempts failed in a row, as status.consecutiveFailures (absent at 0).",
    ),
)


class _PerCredential(Collector):
    """Renders the per-credential series from :class:`_Series` at scrape time. The
    scrape runs in a thread (health.py): it reads a copy of the index (one atomic
    step under the GIL) and tolerates a value changing under it."""

    def __init__(self, series: dict[tuple[str, str, str], _Series]) -> None:
        self._series = series

    def describe(self) -> Iterator[Metric]:
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        return self._families(list(self._series.items()))

    def _families(self, items: list[tuple[tuple[str, str, str], _Series]]) -> Iterator[Metric]:
        refreshes = CounterMetricFamily(
            "itcare_token_refresh",
            "Token refresh attempts by outcome and grant.",
            labels=["namespace", "name", "result", "grant", "scope"],
        )
        errors = CounterMetricFamily(
            "itcare_token_refresh_errors",
            "Failed refresh attempts by Refreshed reason.",
            labels=["namespace", "name", "reason", "scope"],
        )
        for (namespace, name, scope), series in items:
            for (result, grant), value in list(series.refreshes.items()):
                refreshes.add_metric([namespace, name, result, grant, scope], value)
            for reason, value in list(series.errors.items()):
                errors.add_metric([namespace, name, reason, scope], value)
        yield refreshes
        yield errors
        for attribute, metric, documentation in _GAUGES:
            family = GaugeMetricFamily(metric, documentation, labels=CREDENTIAL_LABELS)
            for key, series in items:
                value = getattr(series, attribute)
                if value is not None:
                    family.add_metric(list(key), value)
            yield family


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
