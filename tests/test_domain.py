"""Pure domain logic: spec defaults/validation, source and target Secrets, status."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from itcare_operator.errors import Reason
from itcare_operator.source_secret import SourceSecretError, credentials_from_secret
from itcare_operator.spec import InvalidSpec, SecretKeys, parse_spec
from itcare_operator.status import Condition, Observation, render_status
from itcare_operator.target_secret import (
    EXPIRES_AT_ANNOTATION,
    REFRESHED_AT_ANNOTATION,
    Owner,
    desired_secret,
    is_owned,
    needs_write,
    stored_access_token,
    trusted_token,
    updated_secret,
)
from itcare_operator.token import Token, digest, format_time, parse_time
from itcare_operator.token_endpoint import DEFAULT_TOKEN_URL, Grant

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
SPEC: dict[str, Any] = {"clientSecretRef": {"name": "acct"}, "targetSecret": {"name": "tok"}}
OWNER = Owner("ns", "billing", "uid-1")
TOKEN = Token("at-123", NOW, NOW + dt.timedelta(seconds=1200))


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def test_spec_defaults_without_server_defaulting() -> None:
    spec = parse_spec(SPEC)
    assert (spec.client_id_key, spec.client_secret_key) == ("client-id", "client-secret")
    assert spec.token_url == DEFAULT_TOKEN_URL and spec.grant is Grant.CLIENT_CREDENTIALS
    assert spec.keys == SecretKeys() and spec.refresh_before is None and not spec.suspend


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"clientSecretRef": None}, "clientSecretRef is required"),
        ({"targetSecret": {"name": "acct"}}, "must differ"),
        ({"targetSecret": {"name": "UPPER"}}, "valid Secret name"),
        ({"tokenURL": "http://evil.example/token"}, "tokenURL must be https"),
        ({"tokenURL": 42}, "must be a string"),
        ({"grant": "Password"}, "spec.grant"),
        ({"refreshBeforeExpirySeconds": 5}, "30..86400"),
        ({"refreshBeforeExpirySeconds": "60"}, "30..86400"),
        ({"suspend": "yes"}, "true or false"),
        (
            {"targetSecret": {"name": "tok", "keys": {"accessToken": "a", "tokenType": "a"}}},
            "distinct",
        ),
        ({"targetSecret": {"name": "tok", "keys": {"accessToken": "a/b"}}}, "valid Secret key"),
        ({"targetSecret": {"name": "tok", "labels": {"a": 1}}}, "strings to strings"),
    ],
)
def test_spec_rejections(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as info:
        parse_spec({**SPEC, **change})
    assert info.value.reason is Reason.INVALID_SPEC


def test_spec_full() -> None:
    spec = parse_spec(
        {
            **SPEC,
            "tokenURL": "http://127.0.0.1:8080/t",
            "scope": "  a   b ",
            "grant": "RefreshToken",
            "refreshBeforeExpirySeconds": 120,
            "targetSecret": {"name": "tok", "keys": {"accessToken": "token"}},
        }
    )
    assert spec.scope == "a b" and spec.grant is Grant.REFRESH_TOKEN
    assert spec.refresh_before == dt.timedelta(seconds=120)
    assert spec.keys.access_token == "token" and spec.keys.authorization == "authorization"


def source(data: dict[str, str], labelled: bool = True) -> dict[str, Any]:
    labels = {"itcare.cegedim.cloud/api-account": "true"} if labelled else {}
    return {"metadata": {"name": "acct", "labels": labels}, "data": data}


def read(secret: dict[str, Any] | None, require_label: bool = True) -> Any:
    return credentials_from_secret(
        secret,
        name="acct",
        client_id_key="client-id",
        client_secret_key="client-secret",
        require_label=require_label,
    )


def test_source_secret_ok() -> None:
    creds = read(source({"client-id": b64("id\n"), "client-secret": b64("sec")}))
    assert (creds.client_id, creds.client_secret) == ("id", "sec")
    assert "sec" not in repr(creds) and "id" not in repr(creds).replace("ClientCredentials", "")


@pytest.mark.parametrize(
    ("secret", "reason", "message"),
    [
        (None, Reason.SOURCE_SECRET_NOT_FOUND, "not found"),
        (
            source({"client-id": b64("i"), "client-secret": b64("s")}, labelled=False),
            Reason.SOURCE_SECRET_NOT_LABELED,
            "lacks the label",
        ),
        (source({"client-id": b64("i")}), Reason.SOURCE_SECRET_INVALID, "no key 'client-secret'"),
        (
            source({"client-id": b64("i"), "client-secret": b64("  ")}),
            Reason.SOURCE_SECRET_INVALID,
            "empty",
        ),
        (
            source({"client-id": b64(b"\xff"), "client-secret": b64("s")}),
            Reason.SOURCE_SECRET_INVALID,
            "UTF-8",
        ),
        (
            source({"client-id": b64("i"), "client-secret": b64("x" * 5000)}),
            Reason.SOURCE_SECRET_INVALID,
            "larger than",
        ),
        (
            source({"client-id": b64("i\x00j"), "client-secret": b64("s")}),
            Reason.SOURCE_SECRET_INVALID,
            "control characters",
        ),
        (
            source({"client-id": "!!!", "client-secret": b64("s")}),
            Reason.SOURCE_SECRET_INVALID,
            "base64",
        ),
    ],
)
def test_source_secret_errors(secret: Any, reason: Reason, message: str) -> None:
    with pytest.raises(SourceSecretError, match=message) as info:
        read(secret)
    assert info.value.reason is reason


def test_source_label_not_required_when_disabled() -> None:
    assert (
        read(source({"client-id": b64("i"), "client-secret": b64("s")}, False), False).client_id
        == "i"
    )


def test_target_secret_round_trip() -> None:
    spec = parse_spec({**SPEC, "targetSecret": {"name": "tok", "labels": {"team": "a"}}})
    desired = desired_secret(spec, OWNER, TOKEN)
    assert desired["metadata"]["labels"]["team"] == "a"
    assert base64.b64decode(desired["data"]["authorization"]) == b"Bearer at-123"
    assert is_owned(desired, "uid-1") and not is_owned(desired, "uid-2")
    assert not needs_write(desired, desired)
    status = {
        "tokenFingerprint": digest("at-123"),
        "tokenExpiresAt": format_time(TOKEN.expires_at),
        "lastRefreshTime": format_time(TOKEN.received_at),
    }
    stored = trusted_token(desired, spec.keys, status)
    assert stored is not None
    assert (stored.access_token, stored.expires_at, stored.received_at) == (
        "at-123",
        TOKEN.expires_at,
        TOKEN.received_at,
    )


def test_retained_target_has_no_owner_reference() -> None:
    spec = parse_spec({**SPEC, "targetSecret": {"name": "tok", "deletionPolicy": "Retain"}})
    desired = desired_secret(spec, OWNER, TOKEN)
    assert desired["metadata"]["ownerReferences"] == []
    assert is_owned(desired, "uid-1") and not is_owned(desired, "uid-2")
    deleted_with = desired_secret(parse_spec(SPEC), OWNER, TOKEN)
    assert deleted_with["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    with pytest.raises(InvalidSpec, match="deletionPolicy"):
        parse_spec({**SPEC, "targetSecret": {"name": "tok", "deletionPolicy": "Orphan"}})


def test_drift_detection_and_update_keeps_foreign_metadata() -> None:
    spec = parse_spec(SPEC)
    desired = desired_secret(spec, OWNER, TOKEN)
    existing = {
        **desired,
        "data": {**desired["data"], "extra": b64("x")},
        "metadata": {
            **desired["metadata"],
            "resourceVersion": "7",
            "labels": {**desired["metadata"]["labels"], "other": "tool"},
        },
    }
    assert needs_write(existing, desired)
    updated = updated_secret(existing, desired)
    assert updated["data"] == desired["data"]
    assert updated["metadata"]["labels"]["other"] == "tool"
    assert updated["metadata"]["resourceVersion"] == "7"
    no_owner = {**desired, "metadata": {**desired["metadata"], "ownerReferences": []}}
    assert needs_write(no_owner, desired)


def test_stored_token_tolerates_garbage() -> None:
    keys = SecretKeys()
    assert stored_access_token(None, keys) is None
    assert stored_access_token({"data": {"access_token": "!!"}}, keys) is None
    assert stored_access_token({"data": {"access_token": b64("a b")}}, keys) is None
    assert stored_access_token({"data": {"access_token": 7}}, keys) is None
    assert stored_access_token({"data": ["x"]}, keys) is None
    assert stored_access_token({"data": {"access_token": b64("t" * 70_000)}}, keys) is None
    assert stored_access_token({"data": {"access_token": b64("t")}}, keys) == "t"


POISONED_TIMES = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+23:59",
    "soon",
    "2026-11-28T10:20:00",  # no zone
    "9" * 5000,
    "",
]


@pytest.mark.parametrize("poison", POISONED_TIMES)
def test_a_poisoned_target_secret_neither_raises_nor_changes_the_trusted_expiry(
    poison: str,
) -> None:
    """A tenant edits its target Secret's expiry annotations and key: the stored token
    is still judged by its digest alone, its expiry comes from the status (item 1 of
    the shared-cluster issue: these raised OverflowError and stopped the start-up)."""
    spec = parse_spec(SPEC)
    desired = desired_secret(spec, OWNER, TOKEN)
    meta = desired["metadata"]
    poisoned = {
        **desired,
        "metadata": {
            **meta,
            "annotations": {
                **meta["annotations"],
                EXPIRES_AT_ANNOTATION: poison,
                REFRESHED_AT_ANNOTATION: poison,
            },
        },
        "data": {**desired["data"], "expires_at": b64(poison)},
    }
    status = {
        "tokenFingerprint": digest("at-123"),
        "tokenExpiresAt": format_time(TOKEN.expires_at),
        "lastRefreshTime": format_time(TOKEN.received_at),
    }
    token = trusted_token(poisoned, spec.keys, status)
    assert token is not None and token.expires_at == TOKEN.expires_at
    # A status that is not ours to trust (or corrupt) proves nothing, and never raises.
    assert trusted_token(poisoned, spec.keys, {**status, "tokenExpiresAt": poison}) is None
    assert trusted_token(poisoned, spec.keys, {**status, "tokenFingerprint": "x"}) is None
    assert trusted_token(poisoned, spec.keys, {**status, "tokenFingerprint": 3}) is None


@pytest.mark.parametrize("poison", POISONED_TIMES)
def test_parse_time_raises_only_value_error(poison: str) -> None:
    with pytest.raises(ValueError):
        parse_time(poison)


def test_parse_time_accepts_rfc3339() -> None:
    assert parse_time("2026-11-28T10:20:00Z") == NOW + dt.timedelta(seconds=1200)
    assert parse_time("2026-11-28T11:20:00+01:00") == NOW + dt.timedelta(seconds=1200)


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        generation=2,
        suspended=False,
        token_expires_at=NOW + dt.timedelta(seconds=60),
        refresh_token_expires_at=None,
        refreshed=None,
        last_refresh=NOW,
        next_refresh=NOW + dt.timedelta(seconds=30),
        last_failure=None,
        consecutive_failures=0,
    )
    return Observation(**{**base, **kw})


def test_status_ready_semantics_and_stable_transition_times() -> None:
    failing = Condition("Refreshed", False, Reason.TOKEN_ENDPOINT_UNAVAILABLE, "503")
    first = render_status(obs(refreshed=failing), None, NOW)
    ready, refreshed = first["conditions"]
    assert (refreshed["status"], refreshed["reason"]) == ("False", "TokenEndpointUnavailable")
    assert (ready["status"], ready["reason"]) == ("True", "TokenValid")  # cert-manager semantics
    assert first["summaryReason"] == "TokenEndpointUnavailable"
    later = NOW + dt.timedelta(seconds=10)
    second = render_status(obs(refreshed=failing), first, later)
    assert second["conditions"][0]["lastTransitionTime"] == ready["lastTransitionTime"]
    expired = render_status(obs(refreshed=failing), second, NOW + dt.timedelta(seconds=61))
    assert expired["conditions"][0]["reason"] == "TokenExpired"
    assert expired["conditions"][0]["lastTransitionTime"] == "2026-11-28T10:01:01Z"
    none = render_status(obs(token_expires_at=None), None, NOW)
    assert none["conditions"][0]["reason"] == "NoToken" and none["tokenExpiresAt"] is None
    suspended = render_status(obs(suspended=True), None, NOW)
    assert suspended["conditions"][0]["reason"] == "Suspended"
    assert all(c["observedGeneration"] == 2 for c in first["conditions"])


def test_target_secret_expires_at_key_holds_the_expiry_not_the_receive_time() -> None:
    """Consumers read the ``expires_at`` data key to know when to stop using the token."""
    keys = {"accessToken": "tok", "tokenType": "kind", "expiresAt": "until", "authorization": "h"}
    spec = parse_spec({**SPEC, "targetSecret": {"name": "tok", "keys": keys}})
    desired = desired_secret(spec, OWNER, TOKEN)
    data, annotations = desired["data"], desired["metadata"]["annotations"]
    assert annotations[EXPIRES_AT_ANNOTATION] == "2026-11-28T10:20:00Z"
    assert annotations[REFRESHED_AT_ANNOTATION] == "2026-11-28T10:00:00Z"
    assert set(data) == {"tok", "kind", "until", "h"}
    assert base64.b64decode(data["until"]).decode() == "2026-11-28T10:20:00Z"
    assert base64.b64decode(data["tok"]).decode() == "at-123"
    assert base64.b64decode(data["kind"]).decode() == "Bearer"
    assert base64.b64decode(data["h"]).decode() == "Bearer at-123"


def test_spec_every_field_is_read() -> None:
    spec = parse_spec(
        {
            "clientSecretRef": {"name": "acct", "clientIdKey": "id", "clientSecretKey": "pw"},
            "targetSecret": {
                "name": "tok",
                "deletionPolicy": "Retain",
                "labels": {"team": "a"},
                "annotations": {"example.com/note": "x"},
            },
            "tokenURL": "https://idp.example/token",
            "suspend": True,
        }
    )
    assert (spec.source_name, spec.client_id_key, spec.client_secret_key) == ("acct", "id", "pw")
    assert (spec.target_name, spec.retain, spec.suspend) == ("tok", True, True)
    assert spec.token_url == "https://idp.example/token"
    assert spec.target_labels == {"team": "a"}
    assert spec.target_annotations == {"example.com/note": "x"}


@pytest.mark.parametrize(
    ("seconds", "valid"), [(29, False), (30, True), (86400, True), (86401, False)]
)
def test_spec_refresh_before_bounds(seconds: int, valid: bool) -> None:
    doc = {**SPEC, "refreshBeforeExpirySeconds": seconds}
    if valid:
        assert parse_spec(doc).refresh_before == dt.timedelta(seconds=seconds)
    else:
        with pytest.raises(InvalidSpec, match=r"30\.\.86400"):
            parse_spec(doc)
