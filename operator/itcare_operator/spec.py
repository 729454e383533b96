"""``ITCareCredential.spec``: defaults and validation, applied by the operator itself.

The CRD declares the same defaults and rules; we never rely on server defaulting
alone (a CRD installed from an older chart, or a server without CEL, must not make
the operator misbehave).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from itcare_operator.errors import CredentialError, Reason
from itcare_operator.refresh_policy import DEFAULT_VOLUME_DELIVERY, RefreshPolicy
from itcare_operator.selector import InvalidSelector, LabelSelector, parse_selector
from itcare_operator.token import DEFAULT_TOKEN_URL, Grant

__all__ = [
    "ClusterCredentialSpec",
    "CredentialSpec",
    "InvalidSpec",
    "SecretKeys",
    "parse_cluster_spec",
    "parse_spec",
]

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Kubernetes qualified names (label and annotation keys) and label values.
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
MAX_ANNOTATIONS_BYTES = 256 * 1024
LOCAL_HTTP = re.compile(r"\Ahttp://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?(/.*)?\Z")
"""Anchored with ``\\A`` and ``\\Z``: ``$`` would also match before a final newline."""


class InvalidSpec(CredentialError):
    reason = Reason.INVALID_SPEC


@dataclasses.dataclass(frozen=True)
class SecretKeys:
    """Data keys of the target Secret."""

    access_token: str = "access_token"
    token_type: str = "token_type"
    expires_at: str = "expires_at"
    authorization: str = "authorization"


@dataclasses.dataclass(frozen=True)
class CredentialSpec:
    source_name: str
    client_id_key: str = "client-id"
    client_secret_key: str = "client-secret"
    token_url: str = DEFAULT_TOKEN_URL
    scope: str = ""
    grant: Grant = Grant.CLIENT_CREDENTIALS
    refresh_before: dt.timedelta | None = None
    target_name: str = ""
    retain: bool = False
    """``targetSecret.deletionPolicy: Retain``: the target Secret outlives the credential."""
    target_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    target_annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    keys: SecretKeys = SecretKeys()
    suspend: bool = False
    volume_delivery: dt.timedelta = DEFAULT_VOLUME_DELIVERY
    """Not in the spec: the operator's ``--volume-delivery-seconds``."""

    @property
    def policy(self) -> RefreshPolicy:
        return RefreshPolicy(
            refresh_before=self.refresh_before, volume_delivery=self.volume_delivery
        )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"{where} must be an object")
    return value


def _string(doc: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if value is None:
        raise InvalidSpec(f"{where}.{key} is required")
    if not isinstance(value, str):
        raise InvalidSpec(f"{where}.{key} must be a string")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    doc = _mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise InvalidSpec(f"{where} must map strings to strings")
    return dict(doc)


def _qualified_key(key: str) -> bool:
    """``[prefix/]name`` as the API server checks label and annotation keys."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(QUALIFIED_NAME.match(name))


def _labels(value: Any, where: str) -> dict[str, str]:
    labels = _string_map(value, where)
    for key, text in labels.items():
        if not _qualified_key(key):
            raise InvalidSpec(f"{where}: {key[:80]!r} is not a valid label key")
        if len(text) > 63 or not LABEL_VALUE.match(text):
            raise InvalidSpec(f"{where}: the value of {key!r} is not a valid label value")
    return labels


def _annotations(value: Any, where: str) -> dict[str, str]:
    annotations = _string_map(value, where)
    for key in annotations:
        if not _qualified_key(key):
            raise InvalidSpec(f"{where}: {key[:80]!r} is not a valid annotation key")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES - 4096:  # room for the operator's own annotations
        raise InvalidSpec(f"{where} are larger than the API server allows")
    return annotations


def _name(doc: Mapping[str, Any], where: str) -> str:
    name = _string(doc, "name", where)
    if not name or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        raise InvalidSpec(f"{where}.name must be a valid Secret name")
    return name


def _key(doc: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = _string(doc, key, where, default)
    if not value or len(value) > 253 or not SECRET_KEY.match(value):
        raise InvalidSpec(f"{where}.{key} must be a valid Secret key")
    return value


def _deletion_policy(target: Mapping[str, Any]) -> str:
    policy = target.get("deletionPolicy", "Delete")
    if policy not in ("Delete", "Retain"):
        raise InvalidSpec("spec.targetSecret.deletionPolicy must be Delete or Retain")
    return str(policy)


def parse_spec(spec: Mapping[str, Any] | None) -> CredentialSpec:
    """Apply defaults and the CRD's rules; raise :class:`InvalidSpec` with a clear message."""
    spec = _mapping(spec, "spec")
    source = _mapping(spec.get("clientSecretRef"), "spec.clientSecretRef")
    if not source:
        raise InvalidSpec("spec.clientSecretRef is required")
    target = _mapping(spec.get("targetSecret"), "spec.targetSecret")
    if not target:
        raise InvalidSpec("spec.targetSecret is required")
    source_name = _name(source, "spec.clientSecretRef")
    id_key = _key(source, "clientIdKey", "spec.clientSecretRef", "client-id")
    secret_key = _key(source, "clientSecretKey", "spec.clientSecretRef", "client-secret")
    if id_key == secret_key:
        raise InvalidSpec("clientIdKey and clientSecretKey must differ")
    target_name = _name(target, "spec.targetSecret")
    if target_name == source_name:
        raise InvalidSpec("targetSecret.name must differ from clientSecretRef.name")
    keys_doc = _mapping(target.get("keys"), "spec.targetSecret.keys")
    defaults = SecretKeys()
    keys = SecretKeys(
        **{
            field.name: _key(
                keys_doc,
                _camel(field.name),
                "spec.targetSecret.keys",
                getattr(defaults, field.name),
            )
            for field in dataclasses.fields(SecretKeys)
        }
    )
    if len(set(dataclasses.astuple(keys))) != 4:
        raise InvalidSpec("target Secret key names must be distinct")
    token_url = _string(spec, "tokenURL", "spec", DEFAULT_TOKEN_URL)
    if not (token_url.startswith("https://") or LOCAL_HTTP.match(token_url)):
        raise InvalidSpec("tokenURL must be https (http only for localhost, 127.0.0.1 or [::1])")
    grant_text = _string(spec, "grant", "spec", Grant.CLIENT_CREDENTIALS.value)
    try:
        grant = Grant(grant_text)
    except ValueError:
        raise InvalidSpec("spec.grant must be ClientCredentials or RefreshToken") from None
    before = spec.get("refreshBeforeExpirySeconds")
    if before is not None and (
        isinstance(before, bool) or not isinstance(before, int) or not 30 <= before <= 86400
    ):
        raise InvalidSpec("spec.refreshBeforeExpirySeconds must be an integer in 30..86400")
    suspend = spec.get("suspend", False)
    if not isinstance(suspend, bool):
        raise InvalidSpec("spec.suspend must be true or false")
    return CredentialSpec(
        source_name=source_name,
        client_id_key=id_key,
        client_secret_key=secret_key,
        token_url=token_url,
        scope=" ".join(_string(spec, "scope", "spec", "").split()),
        grant=grant,
        refresh_before=None if before is None else dt.timedelta(seconds=before),
        target_name=target_name,
        retain=_deletion_policy(target) == "Retain",
        target_labels=_labels(target.get("labels"), "spec.targetSecret.labels"),
        target_annotations=_annotations(target.get("annotations"), "spec.targetSecret.annotations"),
        keys=keys,
        suspend=suspend,
    )


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class ClusterCredentialSpec:
    """``ClusterITCareCredential.spec``: the token options plus where it goes."""

    credential: CredentialSpec  # token options and target Secret
    source_namespace: str
    selector: LabelSelector | None  # None: no namespaceSelector given
    namespaces: frozenset[str]

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return namespace in self.namespaces or (
            self.selector is not None and self.selector.matches(labels)
        )


def parse_cluster_spec(spec: Mapping[str, Any] | None) -> ClusterCredentialSpec:
    """Defaults and rules of a ClusterITCareCredential; :class:`InvalidSpec` when broken."""
    spec = _mapping(spec, "spec")
    credential = parse_spec(spec)
    source = _mapping(spec.get("clientSecretRef"), "spec.clientSecretRef")
    namespace = _string(source, "namespace", "spec.clientSecretRef")
    if not DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise InvalidSpec("spec.clientSecretRef.namespace must be a valid namespace name")
    selector_doc = spec.get("namespaceSelector")
    try:
        selector = (
            None if selector_doc is None else parse_selector(selector_doc, "spec.namespaceSelector")
        )
    except InvalidSelector as exc:
        raise InvalidSpec(str(exc)) from None
    names = spec.get("namespaces")
    if names is None:
        names = []
    if not isinstance(names, list) or not all(
        isinstance(n, str) and DNS_LABEL.match(n) and len(n) <= 63 for n in names
    ):
        raise InvalidSpec("spec.namespaces must be a list of namespace names")
    if selector is None and not names:
        raise InvalidSpec("set spec.namespaceSelector or spec.namespaces (or both)")
    return ClusterCredentialSpec(credential, namespace, selector, frozenset(names))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)
