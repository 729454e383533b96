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
import datetime as dt

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from itcare_operator._version import __version__

__all__ = ["CLUSTER", "NAMESPACED", "Metrics"]

NAMESPACED = "namespaced"
CLUSTER = "cluster"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A process-wide switch of prometheus_client: the operator has one registry.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.refresh_total = Counter(
            "itcare_token_refresh_total",
            "Token refresh attempts by outcome and grant.",
            ["namespace", "name", "result", "grant", "scope"],
            registry=r,
        )
        self.refresh_errors_total = Counter(
            "itcare_token_refresh_errors_total",
            "Failed refresh attempts by Refreshed reason.",
            ["namespace", "name", "reason", "scope"],
            registry=r,
        )
        self.request_duration = Histogram(
            "itcare_token_request_duration_seconds",
            "Duration of token endpoint requests.",
            ["result"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
        )
        self.expiration = Gauge(
            "itcare_token_expiration_timestamp_seconds",
            "Unix time the token in the target Secret expires.",
            ["namespace", "name", "scope"],
            registry=r,
        )
        self.next_refresh = Gauge(
            "itcare_token_next_refresh_timestamp_seconds",
            "Unix time of the next scheduled refresh.",
            ["namespace", "name", "scope"],
            registry=r,
        )
        self.ready = Gauge(
            "itcare_credential_ready",
            "1 when the credential's target Secret holds a valid token.",
            ["namespace", "name", "scope"],
            registry=r,
        )
        self.lifetime = Gauge(
            "itcare_token_lifetime_seconds",
            "Lifetime the token in the target Secret was granted (expiry minus receive time).",
            ["namespace", "name", "scope"],
            registry=r,
        )
        # The next two exist only while non-zero: at 10,000 credentials two always-present
        # series each would add about 20 MiB and a third to every scrape, for zeros.
        self.suspended = Gauge(
            "itcare_credential_suspended",
            "1 while the credential's spec.suspend is true (absent otherwise).",
            ["namespace", "name", "scope"],
            registry=r,
        )
        self.consecutive_failures = Gauge(
            "itcare_credential_consecutive_failures",
            "Refresh attempts failed in a row, as status.consecutiveFailures (absent at 0).",
            ["namespace", "name", "scope"],
            registry=r,
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
            "How late the operator's event loop runs a 100 ms timer (responsiveness).",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.kube_requests = Counter(
            "itcare_kube_requests_total",
            "Requests the operator made to the Kubernetes API (watches excluded).",
            ["verb", "resource"],
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
        self.refresh_total.labels(namespace, name, "success", grant, scope).inc()

    def failed(
        self, namespace: str, name: str, grant: str, reason: str, scope: str = NAMESPACED
    ) -> None:
        self.refresh_total.labels(namespace, name, "failure", grant, scope).inc()
        self.refresh_errors_total.labels(namespace, name, reason, scope).inc()

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
        self.ready.labels(namespace, name, scope).set(1 if ready else 0)
        if suspended:
            self.suspended.labels(namespace, name, scope).set(1)
        else:
            _remove(self.suspended, namespace, name, scope)
        if failures:
            self.consecutive_failures.labels(namespace, name, scope).set(failures)
        else:
            _remove(self.consecutive_failures, namespace, name, scope)
        if expires_at is not None:
            self.expiration.labels(namespace, name, scope).set(expires_at.timestamp())
        else:
            _remove(self.expiration, namespace, name, scope)
        if lifetime is not None:
            self.lifetime.labels(namespace, name, scope).set(lifetime.total_seconds())
        else:
            _remove(self.lifetime, namespace, name, scope)
        if next_refresh is not None:
            self.next_refresh.labels(namespace, name, scope).set(next_refresh.timestamp())
        else:
            _remove(self.next_refresh, namespace, name, scope)

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
        for gauge in (
            self.expiration,
            self.next_refresh,
            self.ready,
            self.lifetime,
            self.suspended,
            self.consecutive_failures,
        ):
            _remove(gauge, namespace, name, scope)
        for counter in (self.refresh_total, self.refresh_errors_total):
            for labels in list(counter._metrics):
                if labels[0] == namespace and labels[1] == name and labels[-1] == scope:
                    counter.remove(*labels)
        if scope == CLUSTER:
            for state in ("selected", "synced", "failed"):
                _remove(self.cluster_namespaces, name, state)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
