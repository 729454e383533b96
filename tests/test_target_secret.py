"""The target Secret's shape, owner references and update merge, field by field: what
the API server and the garbage collector read, so each field is pinned exactly."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from itcare_operator.spec import parse_spec
from itcare_operator.target_secret import (
    CLUSTER_CREDENTIAL_LABEL,
    CLUSTER_KIND,
    CREDENTIAL_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_UID_ANNOTATION,
    Owner,
    desired_secret,
    needs_write,
    trusted_token,
    updated_secret,
)
from itcare_operator.token import Token, digest, format_time

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
SPEC = parse_spec({"clientSecretRef": {"name": "acct"}, "targetSecret": {"name": "tok"}})
OWNER = Owner("ns", "billing", "uid-1")
TOKEN = Token("at-123", NOW, NOW + dt.timedelta(seconds=1200))
REFERENCE = {
    "apiVersion": "itcare.cegedim.cloud/v1alpha1",
    "kind": "ITCareCredential",
    "name": "billing",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def test_desired_secret_is_an_opaque_v1_secret_with_a_controller_reference() -> None:
    desired = desired_secret(SPEC, OWNER, TOKEN)
    assert (desired["apiVersion"], desired["kind"], desired["type"]) == ("v1", "Secret", "Opaque")
    meta = desired["metadata"]
    assert (meta["name"], meta["namespace"]) == ("tok", "ns")
    assert meta["ownerReferences"] == [REFERENCE]
    assert meta["labels"] == {MANAGED_BY_LABEL: MANAGED_BY, CREDENTIAL_LABEL: "billing"}
    assert OWNER_UID_ANNOTATION not in meta["annotations"]


def test_a_cluster_copy_is_labelled_for_the_cluster_credential_and_owned_by_uid() -> None:
    owner = Owner("team-a", "shared", "uid-9", kind=CLUSTER_KIND)
    meta = desired_secret(SPEC, owner, TOKEN)["metadata"]
    assert meta["labels"] == {MANAGED_BY_LABEL: MANAGED_BY, CLUSTER_CREDENTIAL_LABEL: "shared"}
    assert meta["annotations"][OWNER_UID_ANNOTATION] == "uid-9"
    assert meta["ownerReferences"] == []
    assert meta["namespace"] == "team-a"


def test_a_secret_of_another_type_needs_a_write() -> None:
    desired = desired_secret(SPEC, OWNER, TOKEN)
    untyped = {k: v for k, v in desired.items() if k != "type"}
    assert not needs_write(untyped, desired)  # the API server's default is Opaque
    assert needs_write({**desired, "type": "kubernetes.io/tls"}, desired)


def test_update_keeps_foreign_annotations_and_references_and_drops_other_controllers() -> None:
    desired = desired_secret(SPEC, OWNER, TOKEN)
    gc_hint = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "cm-1"}
    usurper = {**gc_hint, "uid": "other", "controller": True}
    stale_ours = {**REFERENCE, "blockOwnerDeletion": False}
    existing: dict[str, Any] = {
        **desired,
        "metadata": {
            **desired["metadata"],
            "resourceVersion": "7",
            "annotations": {"team": "a", **desired["metadata"]["annotations"]},
            "ownerReferences": [stale_ours, gc_hint, usurper],
        },
    }
    meta = updated_secret(existing, desired)["metadata"]
    assert meta["annotations"] == {"team": "a", **desired["metadata"]["annotations"]}
    assert meta["ownerReferences"] == [REFERENCE, gc_hint]


def test_a_status_whose_refresh_time_is_not_before_the_expiry_is_clamped() -> None:
    """A receive time at or after the expiry would make a zero or negative lifetime."""
    secret = {"data": {"access_token": base64.b64encode(b"at-123").decode()}}
    for refreshed in (TOKEN.expires_at, TOKEN.expires_at + dt.timedelta(seconds=30)):
        status = {
            "tokenFingerprint": digest("at-123"),
            "tokenExpiresAt": format_time(TOKEN.expires_at),
            "lastRefreshTime": format_time(refreshed),
        }
        token = trusted_token(secret, SPEC.keys, status)
        assert token is not None
        assert token.received_at == TOKEN.expires_at - dt.timedelta(seconds=1)
