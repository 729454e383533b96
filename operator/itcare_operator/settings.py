"""Operator settings: one frozen object, built once from flags and environment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools

from itcare_operator.refresh_policy import DEFAULT_VOLUME_DELIVERY
from itcare_operator.token_url import InvalidTokenURL, URLPrefix, parse_prefix, url_allowed

__all__ = ["DEFAULT_ALLOWED_TOKEN_URL", "Settings"]

DEFAULT_ALLOWED_TOKEN_URL = "https://accounts.cegedim.cloud/auth/realms/cloud/"


@dataclasses.dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: all namespaces (cluster-wide)."""

    metrics_port: int = 9090
    """Port of the Prometheus ``/metrics`` endpoint; 0 disables it."""

    health_port: int = 8080
    """Port of ``/healthz`` and ``/readyz``; 0 disables it."""

    allowed_token_urls: tuple[str, ...] = (DEFAULT_ALLOWED_TOKEN_URL,)
    """URL prefixes a credential's ``tokenURL`` must lie under (``TokenURLNotAllowed``):
    same scheme, host and port, path under the prefix's path after dot-segment removal
    (see :mod:`token_url`)."""

    require_source_label: bool = True
    """Read only source Secrets labelled ``itcare.cegedim.cloud/api-account: "true"``."""

    max_concurrent_requests: int = 10
    """Token requests in flight at once, per token endpoint."""

    requests_per_second: float = 20.0
    """Token requests started per second at most, per token endpoint."""

    token_timeout: float = 20.0
    """Seconds one token request may take in all (connect 5 s, read half of this)."""

    ca_bundle: str | None = None
    """A PEM CA bundle trusted for token endpoints in addition to the default trust
    (the Mozilla CA set shipped by certifi, which httpx uses)."""

    log_format: str = "text"
    """``text`` or ``json``."""

    log_level: str = "INFO"
    """Python logging level name."""

    standalone: bool = False
    """Run without peering (no leader election between replicas)."""

    peering_name: str = "itcare-token-operator"
    """Name of the Lease used to keep a single active replica."""

    cluster_credentials: bool = False
    """Serve ClusterITCareCredentials (cluster-wide mode only)."""

    allowed_source_namespaces: tuple[str, ...] = ()
    """Namespaces a ClusterITCareCredential may read its API account from;
    empty: the operator's own namespace."""

    volume_delivery: dt.timedelta = DEFAULT_VOLUME_DELIVERY
    """Longest time the cluster's kubelets take to put a written Secret into pod volumes;
    the refresh margin never goes below it (``--volume-delivery-seconds``)."""

    operator_namespace: str = "default"
    """The operator's own namespace (``POD_NAMESPACE``): Lease, cluster-scoped events."""

    kubeconfig: str | None = None
    """kubeconfig file; default: in-cluster, else ``KUBECONFIG`` or ``~/.kube/config``."""

    context: str | None = None
    """kubeconfig context; default: the file's current context."""

    @property
    def source_namespaces(self) -> tuple[str, ...]:
        return self.allowed_source_namespaces or (self.operator_namespace,)

    @functools.cached_property
    def token_url_prefixes(self) -> tuple[URLPrefix, ...]:
        """The allowed prefixes, normalised; an invalid one allows nothing (the command
        line refuses it before this is built)."""
        prefixes = []
        for text in self.allowed_token_urls:
            try:
                prefixes.append(parse_prefix(text))
            except InvalidTokenURL:
                continue
        return tuple(prefixes)

    def token_url_allowed(self, url: str) -> bool:
        return url_allowed(url, self.token_url_prefixes)
