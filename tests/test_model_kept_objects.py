"""What the model keeps of the objects it watches: the source Secret's fingerprint (what
decides that a credential must read its source again) and the slimmed copies held in
memory."""

from __future__ import annotations

from typing import Any

from itcare_operator.model import (
    MAX_KEPT_DATA,
    slim,
    slim_credential,
    slim_secret,
    source_fingerprint,
)

LABEL = "itcare.cegedim.cloud/api-account"
KEYS = ("client-id", "client-secret")


def source(uid: str = "u1", labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "acct",
            "uid": uid,
            "labels": {LABEL: "true"} if labels is None else labels,
        },
        "data": {"client-id": "aWQ=", "client-secret": "cHc=", "other": "eA==", **data},
    }


def test_source_fingerprint_changes_with_what_the_credential_reads() -> None:
    base = source_fingerprint(source(), KEYS)
    assert len(base) == 64 and base != "absent"
    assert source_fingerprint(None, KEYS) == "absent"
    assert source_fingerprint(source(), KEYS) == base  # stable
    assert source_fingerprint(source(uid="u2"), KEYS) != base  # deleted and created again
    assert source_fingerprint(source(labels={LABEL: "false"}), KEYS) != base
    assert source_fingerprint(source(labels={}), KEYS) != base
    rotated = source()
    rotated["data"]["client-secret"] = "bmV3"
    assert source_fingerprint(rotated, KEYS) != base
    # Keys read by another credential of the same Secret are not this one's concern.
    assert source_fingerprint(source(), ("client-id",)) != base


def test_source_fingerprint_ignores_what_the_credential_does_not_read() -> None:
    base = source_fingerprint(source(), KEYS)
    assert source_fingerprint(source(other="eXk="), KEYS) == base
    assert source_fingerprint(source(labels={LABEL: "true", "x": "y"}), KEYS) == base
    renamed = source()
    renamed["metadata"]["resourceVersion"] = "9"
    assert source_fingerprint(renamed, KEYS) == base


def test_slim_drops_managed_fields_only() -> None:
    obj: dict[str, Any] = {
        "kind": "Secret",
        "metadata": {"name": "a", "managedFields": [{"x": 1}]},
        "data": {},
    }
    assert slim(obj) == {"kind": "Secret", "metadata": {"name": "a"}, "data": {}}
    assert obj["metadata"]["managedFields"]  # the original is untouched


def test_slim_secret_drops_data_larger_than_any_token_we_write() -> None:
    at_limit = {"metadata": {"name": "a"}, "data": {"k": "x" * MAX_KEPT_DATA}}
    assert slim_secret(at_limit)["data"] == at_limit["data"]
    over = {"metadata": {"name": "a"}, "data": {"k": "x" * MAX_KEPT_DATA, "j": "y"}}
    assert slim_secret(over) == {"metadata": {"name": "a"}, "data": {}}


def test_slim_credential_drops_status_and_managed_fields() -> None:
    body = {
        "spec": {"a": 1},
        "status": {"conditions": []},
        "metadata": {"name": "c", "managedFields": []},
    }
    assert slim_credential(body) == {"spec": {"a": 1}, "metadata": {"name": "c"}}
