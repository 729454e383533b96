"""The Kubernetes API as the operator sees it: where its objects are, and its answers
as exceptions (status and reason only, never a body: bodies may echo a Secret).

No client here: :mod:`kube` sends the requests.
"""

from __future__ import annotations

import json

import kubernetes

__all__ = [
    "CLUSTER_PLURAL",
    "GROUP",
    "PLURAL",
    "VERSION",
    "Conflict",
    "Invalid",
    "KubeError",
    "NotFound",
    "api_error",
    "cluster_credentials_path",
    "credentials_path",
    "load_config",
    "namespaces_path",
    "secrets_path",
]

GROUP = "itcare.cegedim.cloud"
VERSION = "v1alpha1"
PLURAL = "itcarecredentials"
CLUSTER_PLURAL = "clusteritcarecredentials"


class KubeError(Exception):
    """An API call failed. The message holds the status and reason, never a body."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: resourceVersion conflict or AlreadyExists."""


class Invalid(KubeError):
    """422: the object breaks a validation rule; resending it cannot succeed."""


def load_config(
    kubeconfig: str | None = None, context: str | None = None
) -> kubernetes.client.Configuration:
    """In-cluster configuration, else ``KUBECONFIG`` / ``~/.kube/config``; an explicit
    kubeconfig file or context (the CLI flags) wins over in-cluster configuration."""
    config = kubernetes.client.Configuration()
    if kubeconfig or context:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=config
        )
        return config
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
    return config


def api_error(status: int, reason: str, body: bytes, what: str) -> KubeError:
    """A non-2xx answer as :class:`NotFound`, :class:`Conflict` or :class:`KubeError`;
    the message holds the status and the Status object's reason, never the body."""
    try:
        doc = json.loads(body or b"{}")
        detail = (doc.get("reason") or "") if isinstance(doc, dict) else ""
    except ValueError:
        detail = ""
    message = f"{what}: {status} {reason}{f' ({detail})' if detail else ''}"
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return Conflict(message, status)
    if status == 422:
        return Invalid(message, status)
    return KubeError(message, status)


def credentials_path(namespace: str | None) -> str:
    """The ITCareCredentials of one namespace (None: of all)."""
    where = f"namespaces/{namespace}/" if namespace else ""
    return f"/apis/{GROUP}/{VERSION}/{where}{PLURAL}"


def cluster_credentials_path() -> str:
    return f"/apis/{GROUP}/{VERSION}/{CLUSTER_PLURAL}"


def namespaces_path() -> str:
    return "/api/v1/namespaces"


def secrets_path(namespace: str | None) -> str:
    """The Secrets of one namespace (None: of all)."""
    where = f"namespaces/{namespace}/" if namespace else ""
    return f"/api/v1/{where}secrets"
