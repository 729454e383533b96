"""The target Secret: what it must contain, whether we own it, what token it holds.

Pure functions over Secret dicts (API JSON); the API calls are in :mod:`kube`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from itcare_operator.spec import CredentialSpec, SecretKeys
from itcare_operator.token import Token, digest, format_time, parse_time, usable_access_token

__all__ = [
    "CLUSTER_CREDENTIAL_LABEL",
    "CLUSTER_KIND",
    "CREDENTIAL_LABEL",
    "EXPIRES_AT_ANNOTATION",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "OWNER_UID_ANNOTATION",
    "REFRESHED_AT_ANNOTATION",
    "Owner",
    "desired_secret",
    "is_owned",
    "needs_write",
    "stored_access_token",
    "trusted_token",
    "updated_secret",
]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "itcare-token-operator"
CREDENTIAL_LABEL = "itcare.cegedim.cloud/credential"
EXPIRES_AT_ANNOTATION = "itcare.cegedim.cloud/expires-at"
REFRESHED_AT_ANNOTATION = "itcare.cegedim.cloud/refreshed-at"
# Copies written for a ClusterITCareCredential: no ownerReference (the owner is
# cluster-scoped and the operator deletes copies itself), ownership by uid annotation.
CLUSTER_CREDENTIAL_LABEL = "itcare.cegedim.cloud/cluster-credential"
OWNER_UID_ANNOTATION = "itcare.cegedim.cloud/owner-uid"
CLUSTER_KIND = "ClusterITCareCredential"
API_VERSION = "itcare.cegedim.cloud/v1alpha1"
# Base64 characters of a stored access token worth decoding: far above any token the
# endpoint issues, far below what a tenant can put into a Secret (1 MiB).
MAX_STORED_TOKEN = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Owner:
    """The credential a target Secret belongs to; for a ClusterITCareCredential,
    ``namespace`` is the namespace of the copy."""

    namespace: str
    name: str
    uid: str
    kind: str = "ITCareCredential"
    api_version: str = API_VERSION

    @property
    def cluster(self) -> bool:
        return self.kind == CLUSTER_KIND

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def desired_secret(spec: CredentialSpec, owner: Owner, token: Token) -> dict[str, Any]:
    """The complete target Secret for this token."""
    keys = spec.keys
    owner_label = CLUSTER_CREDENTIAL_LABEL if owner.cluster else CREDENTIAL_LABEL
    labels = {**spec.target_labels, MANAGED_BY_LABEL: MANAGED_BY, owner_label: owner.name}
    annotations = {
        **spec.target_annotations,
        EXPIRES_AT_ANNOTATION: format_time(token.expires_at),
        REFRESHED_AT_ANNOTATION: format_time(token.received_at),
    }
    # An owner reference makes the garbage collector delete the Secret with its owner;
    # a copy of a cluster credential (deleted by the operator itself) and a target kept
    # on deletion (deletionPolicy: Retain) are owned by the uid annotation alone.
    by_reference = not owner.cluster and not spec.retain
    if not by_reference:
        annotations[OWNER_UID_ANNOTATION] = owner.uid
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": spec.target_name,
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner.reference()] if by_reference else [],
        },
        "data": {
            keys.access_token: _b64(token.access_token),
            keys.token_type: _b64(token.token_type),
            keys.expires_at: _b64(format_time(token.expires_at)),
            keys.authorization: _b64(token.authorization),
        },
    }


def is_owned(secret: Mapping[str, Any], uid: str) -> bool:
    """True when the Secret names this credential as its controller owner (a copy of
    a ClusterITCareCredential, or a target kept on deletion: by the owner-uid
    annotation, on a Secret labelled as the operator's)."""
    meta = secret.get("metadata") or {}
    if uid and (meta.get("annotations") or {}).get(OWNER_UID_ANNOTATION) == uid:
        labels = meta.get("labels") or {}
        return CLUSTER_CREDENTIAL_LABEL in labels or CREDENTIAL_LABEL in labels
    refs = meta.get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def _owner_uid(desired: Mapping[str, Any]) -> str:
    want = desired["metadata"]
    refs = want.get("ownerReferences") or []
    return str(refs[0]["uid"]) if refs else str(want["annotations"][OWNER_UID_ANNOTATION])


def _ours_in(current: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(current.get(k) == v for k, v in wanted.items())


def needs_write(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Does the existing Secret differ from what we want in anything we manage?"""
    meta, want = existing.get("metadata") or {}, desired["metadata"]
    return (
        (existing.get("data") or {}) != desired["data"]
        or existing.get("type", "Opaque") != "Opaque"
        or not _ours_in(meta.get("labels") or {}, want["labels"])
        or not _ours_in(meta.get("annotations") or {}, want["annotations"])
        or not is_owned(existing, _owner_uid(desired))
    )


def updated_secret(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired``, keeping labels and annotations that other tools added to the Secret.

    The data is ours alone: keys someone else added are removed.
    """
    meta = existing.get("metadata") or {}
    want = desired["metadata"]
    uid = _owner_uid(desired)
    others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
    return {
        **desired,
        "metadata": {
            **want,
            "labels": {**(meta.get("labels") or {}), **want["labels"]},
            "annotations": {**(meta.get("annotations") or {}), **want["annotations"]},
            "ownerReferences": [
                *want["ownerReferences"],
                *(r for r in others if not r.get("controller")),
            ],
            "resourceVersion": meta.get("resourceVersion"),
        },
    }


def stored_access_token(secret: Mapping[str, Any] | None, keys: SecretKeys) -> str | None:
    """The access token a target Secret holds, decoded; None when absent or unusable.

    Nothing else of the Secret is read: its annotations and other keys are written by
    whoever can edit it, and are never parsed (see :func:`trusted_token`)."""
    if not secret:
        return None
    data = secret.get("data") or {}
    raw = data.get(keys.access_token) if isinstance(data, Mapping) else None
    if not isinstance(raw, str) or len(raw) > MAX_STORED_TOKEN:
        return None
    try:
        access_token = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return access_token if usable_access_token(access_token) else None


def trusted_token(
    secret: Mapping[str, Any] | None, keys: SecretKeys, status: Mapping[str, Any] | None
) -> Token | None:
    """The token a target Secret holds, if it provably is the one the operator wrote.

    Anyone who can edit the Secret can change its token, expiry and annotations; only
    the operator writes the credential's status. The stored token is reused (restart
    safety) only when its digest equals ``status.tokenFingerprint``, and that digest is
    compared before anything else is looked at: the expiry and receive time then come
    from the status (``tokenExpiresAt``, ``lastRefreshTime``), never from the Secret's
    annotations or ``expires_at`` key, which are not parsed at all. A status that does
    not parse (or names an instant Python cannot represent) proves nothing: None.
    """
    if not status:
        return None
    fingerprint = status.get("tokenFingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        return None
    access_token = stored_access_token(secret, keys)
    if access_token is None or digest(access_token) != fingerprint:
        return None
    try:
        expires_at = parse_time(str(status.get("tokenExpiresAt") or ""))
    except ValueError:
        return None
    try:
        received_at = parse_time(str(status.get("lastRefreshTime") or ""))
    except ValueError:
        received_at = expires_at
    if received_at >= expires_at:
        received_at = expires_at - dt.timedelta(seconds=1)
    return Token(access_token=access_token, received_at=received_at, expires_at=expires_at)
