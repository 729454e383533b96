"""The operator as users run it: a process, the real control plane, the real Keycloak.

Keycloak sits behind a small proxy of ours (``tests/proxy.py``) that counts requests
per client on the server side and injects faults Keycloak cannot produce. Each test
has its own namespace and its own operator process scoped to it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

import itcare_operator
from itcare_operator.token import parse_time
from tests.keycloak_fake import Fault
from tests.proxy import KeycloakProxy
from tests.testenv import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    assert_no_leaks,
    condition,
    dump,
    events,
    get_credential,
    make_credential,
    make_source_secret,
    secret_data,
    wait_for,
)

pytestmark = [pytest.mark.env, pytest.mark.e2e]

TEST, SECOND, DISABLED = "itcare-test", "itcare-second", "itcare-disabled"


@dataclasses.dataclass
class Scenario:
    """One namespace, the Keycloak proxy, an operator, and helpers to look at them."""

    namespace: str
    core: kubernetes.client.CoreV1Api
    custom: kubernetes.client.CustomObjectsApi
    kc: KeycloakProxy
    realm: dict[str, Any]
    start_operator: Callable[..., OperatorProcess]
    operator: OperatorProcess | None = None

    def client(self, name: str = TEST) -> dict[str, Any]:
        return self.realm["clients"][name]  # type: ignore[no-any-return]

    def source(self, client: str = TEST, **kwargs: Any) -> None:
        make_source_secret(self.core, self.namespace, self.client(client), **kwargs)

    def credential(self, **spec: Any) -> dict[str, Any]:
        return make_credential(self.custom, self.namespace, self.kc.token_url, **spec)

    def run(self, *args: str) -> OperatorProcess:
        self.operator = self.start_operator(
            f"--namespace={self.namespace}",
            "--standalone",
            f"--allowed-token-url={self.kc.base_url}/auth/realms/cloud/",
            *args,
        )
        return self.operator

    def cr(self, name: str = "billing") -> dict[str, Any]:
        return get_credential(self.custom, self.namespace, name)

    def token(self, name: str = "itcare-token") -> dict[str, str] | None:
        return secret_data(self.core, self.namespace, name)

    def wait_token(self, *, other_than: str | None = None, timeout: float = 30) -> dict[str, str]:
        def fresh() -> dict[str, str] | None:
            data = self.token()
            if data and data.get("access_token") != other_than:
                return data
            return None

        return wait_for("a token in the target Secret", fresh, timeout)

    def wait_condition(
        self, type_: str, status: str, reason: str, timeout: float = 30, name: str = "billing"
    ) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            cr = self.cr(name)
            cond = condition(cr, type_)
            if cond.get("status") == status and cond.get("reason") == reason:
                return cr
            return None

        return wait_for(f"{type_}={status}/{reason}", matches, timeout)

    def patch_spec(self, spec: dict[str, Any], name: str = "billing") -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def requests(self, client: str = TEST, **kwargs: Any) -> int:
        return self.kc.count(self.client(client)["client_id"], **kwargs)

    def scan_for_leaks(self) -> None:
        """Logs, events, status and metrics never hold a token, secret or client id."""
        haystacks = [self.operator.output() if self.operator else ""]
        haystacks += [dump(e.to_dict()) for e in events(self.core, self.namespace)]
        crs = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        haystacks += [dump(item.get("status")) for item in crs["items"]]
        if self.operator and self.operator.proc and self.operator.proc.poll() is None:
            haystacks.append(self.operator.metrics())
        needles = [*self.kc.issued]
        for client in self.realm["clients"].values():
            needles += [client["client_id"], client["client_secret"]]
        assert_no_leaks(haystacks, needles)


@pytest.fixture
def sc(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kc: KeycloakProxy,
    realm: dict[str, Any],
    run_operator: Callable[..., OperatorProcess],
    request: pytest.FixtureRequest,
) -> Scenario:
    scenario = Scenario(namespace, core, custom, kc, realm, run_operator)
    yield scenario  # type: ignore[misc]
    if getattr(request.node, "rep_call", None) and request.node.rep_call.passed:
        scenario.scan_for_leaks()


def test_issuance_writes_the_target_secret_as_the_contract_says(sc: Scenario) -> None:
    sc.source()
    created = sc.credential(
        targetSecret={"name": "itcare-token", "labels": {"team": "a"}, "annotations": {"note": "x"}}
    )
    started = time.monotonic()
    sc.run()
    data = sc.wait_token()
    latency = time.monotonic() - started
    assert data["token_type"] == "Bearer"
    assert data["authorization"] == f"Bearer {data['access_token']}"
    assert data["access_token"] in sc.kc.issued
    expires = parse_time(data["expires_at"])
    assert dt.timedelta(seconds=20) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=31)
    secret = sc.core.read_namespaced_secret("itcare-token", sc.namespace)
    assert secret.type == "Opaque"
    assert set(secret.data) == {"access_token", "token_type", "expires_at", "authorization"}
    labels, annotations = secret.metadata.labels, secret.metadata.annotations
    assert labels["app.kubernetes.io/managed-by"] == "itcare-token-operator"
    assert labels["itcare.cegedim.cloud/credential"] == "billing" and labels["team"] == "a"
    assert annotations["itcare.cegedim.cloud/expires-at"] == data["expires_at"]
    assert parse_time(annotations["itcare.cegedim.cloud/refreshed-at"]) < expires
    assert annotations["note"] == "x"
    (ref,) = secret.metadata.owner_references
    assert (ref.kind, ref.name, ref.uid, ref.controller) == (
        "ITCareCredential",
        "billing",
        created["metadata"]["uid"],
        True,
    )
    for value in secret.data.values():  # no refresh token, no client secret
        decoded = base64.b64decode(value).decode()
        assert sc.client()["client_secret"] not in decoded
        assert not any(t in decoded for t in sc.kc.issued if t != data["access_token"])
    cr = sc.wait_condition("Ready", "True", "TokenValid")
    status = cr["status"]
    assert status["tokenExpiresAt"] == data["expires_at"]
    assert status["observedGeneration"] == cr["metadata"]["generation"]
    assert status["consecutiveFailures"] == 0 and status["lastRefreshTime"]
    assert parse_time(status["nextRefreshTime"]) < expires
    assert condition(cr, "Refreshed")["reason"] == "RefreshSucceeded"
    reasons = [e.reason for e in events(sc.core, sc.namespace)]
    assert "TokenIssued" in reasons
    assert sc.requests() == 1
    print(f"create-to-Secret latency (operator start included): {latency:.2f}s")


def test_refreshes_before_expiry_across_lifetimes(sc: Scenario) -> None:
    """Watch the Secret for over two 30 s lifetimes: never expired, one request per cycle."""
    sc.source()
    sc.credential()
    sc.run()
    first = sc.wait_token()
    seen: dict[str, dt.datetime] = {first["access_token"]: parse_time(first["expires_at"])}
    deadline = time.monotonic() + 65
    while time.monotonic() < deadline:
        data = sc.token()
        assert data is not None
        now = dt.datetime.now(dt.UTC)
        expires = parse_time(data["expires_at"])
        assert now < expires, "the Secret held an expired token"
        # refreshed with at least ~1/3 of the lifetime left (minus our polling slack)
        assert expires - now > dt.timedelta(seconds=8)
        seen[data["access_token"]] = expires
        time.sleep(0.5)
    assert len(seen) >= 4  # 30 s tokens refreshed at ~15 s: 5 or so in 65 s
    requests = sc.requests()
    assert len(seen) <= requests <= len(seen) + 1
    assert sc.operator is not None
    assert (
        sc.operator.metric(
            "itcare_token_refresh_total", namespace=sc.namespace, name="billing", result="success"
        )
        == requests
    )


def test_deleting_the_credential_garbage_collects_the_secret(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    op = sc.run()
    sc.wait_token()
    wait_for(  # set with the status, right after the Secret write
        "ready gauge",
        lambda: op.metric("itcare_credential_ready", namespace=sc.namespace, name="billing") == 1.0,
    )
    sc.custom.delete_namespaced_custom_object(GROUP, VERSION, sc.namespace, PLURAL, "billing")
    wait_for("target Secret garbage-collected", lambda: sc.token() is None, timeout=60)
    wait_for(
        "per-credential series removed",
        lambda: (
            op.metric("itcare_credential_ready", namespace=sc.namespace, name="billing") is None
        ),
    )
    assert (
        op.metric(
            "itcare_token_refresh_total", namespace=sc.namespace, name="billing", result="success"
        )
        is None
    )


def test_retained_target_outlives_the_credential(sc: Scenario) -> None:
    """``deletionPolicy: Retain``: no owner reference, so deleting the credential keeps
    the Secret with its last token (as External Secrets' ``deletionPolicy: Retain``)."""
    sc.source()
    sc.credential(targetSecret={"name": "itcare-token", "deletionPolicy": "Retain"})
    sc.run()
    token = sc.wait_token()
    sc.wait_condition("Ready", "True", "TokenValid")
    secret = sc.core.read_namespaced_secret("itcare-token", sc.namespace)
    assert not secret.metadata.owner_references
    # Still the operator's while the credential lives: an edit is repaired.
    sc.core.patch_namespaced_secret(
        "itcare-token", sc.namespace, {"stringData": {"access_token": "edited"}}
    )
    wait_for("the edit repaired", lambda: sc.token() == token)
    sc.custom.delete_namespaced_custom_object(GROUP, VERSION, sc.namespace, PLURAL, "billing")
    wait_for(
        "the credential gone",
        lambda: (
            not sc.custom.list_namespaced_custom_object(GROUP, VERSION, sc.namespace, PLURAL)[
                "items"
            ]
        ),
    )
    time.sleep(3)  # the garbage collector had its chance
    assert sc.token() == token


def test_spec_change_refreshes_now(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.run()
    first = sc.wait_token()
    sc.patch_spec({"scope": "email"})
    second = sc.wait_token(other_than=first["access_token"], timeout=10)
    assert second["access_token"] != first["access_token"]
    cr = sc.wait_condition("Ready", "True", "TokenValid")
    assert cr["status"]["observedGeneration"] == 2


def test_source_secret_rotation_gets_a_new_token_within_seconds(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.run()
    first = sc.wait_token()
    assert sc.requests(SECOND) == 0
    second = sc.client(SECOND)
    sc.core.patch_namespaced_secret(
        "itcare-api-account",
        sc.namespace,
        {
            "stringData": {
                "client-id": second["client_id"],
                "client-secret": second["client_secret"],
            }
        },
    )
    rotated_at = time.monotonic()
    new = sc.wait_token(other_than=first["access_token"], timeout=10)
    assert time.monotonic() - rotated_at < 10
    assert sc.requests(SECOND) == 1
    assert new["access_token"] in sc.kc.issued


def test_wrong_secret_without_a_token_backs_off(sc: Scenario) -> None:
    sc.source(data={"client-id": sc.client()["client_id"], "client-secret": "not-the-secret"})
    sc.credential()
    sc.run()
    cr = sc.wait_condition("Refreshed", "False", "UnauthorizedClient")
    assert condition(cr, "Ready")["reason"] == "NoToken"
    assert condition(cr, "Ready")["status"] == "False"
    assert cr["status"]["summaryReason"] == "UnauthorizedClient"
    assert "Invalid client or Invalid client credentials" in condition(cr, "Refreshed")["message"]
    time.sleep(40)
    attempts = sc.requests(status=401)
    assert 1 <= attempts <= 2, f"{attempts} requests in 40 s: hammering"
    warnings = [e for e in events(sc.core, sc.namespace) if e.reason == "UnauthorizedClient"]
    assert len(warnings) == 1  # aggregated, not one per retry
    assert sc.token() is None


def test_wrong_secret_keeps_ready_while_the_token_is_valid(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.run()
    first = sc.wait_token()
    sc.core.patch_namespaced_secret(
        "itcare-api-account", sc.namespace, {"stringData": {"client-secret": "revoked"}}
    )
    cr = sc.wait_condition("Refreshed", "False", "UnauthorizedClient", timeout=10)
    assert condition(cr, "Ready")["status"] == "True"
    assert condition(cr, "Ready")["reason"] == "TokenValid"
    assert cr["status"]["consecutiveFailures"] >= 1 and cr["status"]["lastFailureTime"]
    assert sc.token() == first  # the still-valid token stays
    # ... until it expires: then Ready turns False with TokenExpired, at expiry, not before.
    expires = parse_time(first["expires_at"])
    cr = sc.wait_condition("Ready", "False", "TokenExpired", timeout=40)
    assert dt.datetime.now(dt.UTC) >= expires
    assert "TokenExpired" in [e.reason for e in events(sc.core, sc.namespace)]
    # Fixing the secret recovers at once.
    sc.core.patch_namespaced_secret(
        "itcare-api-account",
        sc.namespace,
        {"stringData": {"client-secret": sc.client()["client_secret"]}},
    )
    sc.wait_condition("Ready", "True", "TokenValid", timeout=10)
    assert "RefreshRecovered" in [e.reason for e in events(sc.core, sc.namespace)]


def test_disabled_client(sc: Scenario) -> None:
    sc.source(DISABLED)
    sc.credential()
    sc.run()
    sc.wait_condition("Refreshed", "False", "InvalidClient")


def test_missing_source_secret_then_created(sc: Scenario) -> None:
    sc.credential()
    sc.run()
    cr = sc.wait_condition("Refreshed", "False", "SourceSecretNotFound")
    assert "itcare-api-account" in condition(cr, "Refreshed")["message"]
    assert sc.requests(status=None) == 0
    sc.source()
    sc.wait_condition("Ready", "True", "TokenValid", timeout=10)


def test_missing_key_then_fixed(sc: Scenario) -> None:
    sc.source(data={"client-id": sc.client()["client_id"]})
    sc.credential()
    sc.run()
    cr = sc.wait_condition("Refreshed", "False", "SourceSecretInvalid")
    assert "client-secret" in condition(cr, "Refreshed")["message"]
    sc.core.patch_namespaced_secret(
        "itcare-api-account",
        sc.namespace,
        {"stringData": {"client-secret": sc.client()["client_secret"]}},
    )
    sc.wait_condition("Ready", "True", "TokenValid", timeout=10)


def test_source_secret_without_the_opt_in_label(sc: Scenario) -> None:
    sc.source(labelled=False)
    sc.credential()
    sc.run()
    # Reported like an absent Secret (the operator does not read it: no existence oracle).
    cr = sc.wait_condition("Refreshed", "False", "SourceSecretNotFound")
    assert "lacks the label" in condition(cr, "Refreshed")["message"]
    assert sc.requests(status=None) == 0
    sc.core.patch_namespaced_secret(
        "itcare-api-account",
        sc.namespace,
        {"metadata": {"labels": {"itcare.cegedim.cloud/api-account": "true"}}},
    )
    sc.wait_condition("Ready", "True", "TokenValid", timeout=10)


def test_target_conflict_never_overwrites(sc: Scenario) -> None:
    sc.source()
    sc.core.create_namespaced_secret(
        sc.namespace, {"metadata": {"name": "itcare-token"}, "stringData": {"mine": "keep me"}}
    )
    sc.credential()
    sc.run()
    sc.wait_condition("Refreshed", "False", "TargetSecretConflict")
    assert sc.token() == {"mine": "keep me"}
    assert sc.requests(status=None) == 0  # no token minted for nothing


def test_drift_is_repaired_without_a_new_token(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.run()
    original = sc.wait_token()
    sc.core.patch_namespaced_secret(
        "itcare-token",
        sc.namespace,
        {
            "data": {
                "access_token": base64.b64encode(b"tampered").decode(),
                "extra": base64.b64encode(b"x").decode(),
            }
        },
    )
    wait_for("drift repaired", lambda: sc.token() == original, timeout=10)
    sc.core.delete_namespaced_secret("itcare-token", sc.namespace)
    wait_for("deleted Secret restored", lambda: sc.token() == original, timeout=10)
    assert sc.requests() == 1  # the same token, no new one minted for drift


def test_refresh_requested_annotation_forces_a_new_token(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.run()
    first = sc.wait_token()
    sc.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        sc.namespace,
        PLURAL,
        "billing",
        {"metadata": {"annotations": {"itcare.cegedim.cloud/refresh-requested-at": "now-1"}}},
    )
    second = sc.wait_token(other_than=first["access_token"], timeout=10)
    assert second != first and sc.requests() == 2


def test_suspend_keeps_the_secret_and_stops_refreshing(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    op = sc.run()
    first = sc.wait_token()
    sc.patch_spec({"suspend": True})
    cr = sc.wait_condition("Ready", "True", "Suspended", timeout=10)
    assert cr["status"].get("nextRefreshTime") is None
    time.sleep(20)  # past the refresh point of a 30 s token
    assert sc.requests() == 1 and sc.token() == first
    assert op.metric("itcare_credentials", state="suspended") == 1.0
    suspended = {"namespace": sc.namespace, "name": "billing"}
    assert op.metric("itcare_credential_suspended", **suspended) == 1.0  # the alerts skip it
    sc.wait_condition("Ready", "False", "Suspended", timeout=15)
    sc.patch_spec({"suspend": False})
    sc.wait_token(other_than=first["access_token"], timeout=10)
    sc.wait_condition("Ready", "True", "TokenValid")
    assert op.metric("itcare_credential_suspended", **suspended) is None


def test_restart_reuses_the_stored_token(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    op = sc.run()
    first = sc.wait_token()
    # The status lands right after the Secret: wait for it, so that the restart finds
    # a status that is already right (else patching it would be correct, not a bug).
    wait_for(
        "the status of the first token",
        lambda: (sc.cr().get("status") or {}).get("tokenExpiresAt") == first["expires_at"],
    )
    assert op.stop() == 0
    restarted = sc.run()
    restarted.wait_ready()
    time.sleep(3)
    assert sc.requests() == 1, "a restart minted a token although the stored one was valid"
    assert sc.token() == first
    # Nor rewrote the status: nothing in it changed.
    assert (
        restarted.metric(
            "itcare_kube_requests_total", verb="patch", resource="itcarecredentials/status"
        )
        is None
    ), "a restart patched an unchanged status"
    # the schedule resumes: a refresh still happens before expiry
    sc.wait_token(other_than=first["access_token"], timeout=20)
    assert sc.requests() == 2


def test_restart_ignores_a_forged_target_secret(sc: Scenario) -> None:
    """Whoever can edit the target Secret cannot make a restarted operator keep a token
    of their choosing (and stop refreshing): the status, which they cannot write,
    holds the proof of what the operator wrote."""
    sc.source()
    sc.credential()
    op = sc.run()
    first = sc.wait_token()
    wait_for(
        "the status of the first token",
        lambda: (sc.cr().get("status") or {}).get("tokenFingerprint"),
    )
    assert op.stop() == 0
    forged, far = "forged\r\nX-Injected: 1", "2099-01-01T00:00:00Z"
    sc.core.patch_namespaced_secret(
        "itcare-token",
        sc.namespace,
        {
            "metadata": {"annotations": {"itcare.cegedim.cloud/expires-at": far}},
            "stringData": {
                "access_token": forged,
                "expires_at": far,
                "authorization": f"Bearer {forged}",
            },
        },
    )
    sc.run()
    fresh = sc.wait_token(other_than=forged, timeout=20)
    assert fresh["access_token"] in sc.kc.issued and fresh != first
    assert sc.requests() == 2, "the forged token was reused instead of a new one obtained"
    status = wait_for(
        "the status of the new token",
        lambda: (
            (sc.cr().get("status") or {})
            if (sc.cr().get("status") or {}).get("tokenExpiresAt") == fresh["expires_at"]
            else None
        ),
    )
    assert parse_time(status["nextRefreshTime"]) < dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


def test_token_url_outside_the_allowlist_sends_nothing(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.start_operator(
        f"--namespace={sc.namespace}",
        "--standalone",
        "--allowed-token-url=https://accounts.cegedim.cloud/auth/realms/cloud/",
    )
    sc.operator = None
    sc.wait_condition("Refreshed", "False", "TokenURLNotAllowed")
    assert sc.requests(status=None) == 0


def test_refresh_token_grant_and_fallback(sc: Scenario) -> None:
    sc.source()
    sc.credential(grant="RefreshToken")
    sc.run()
    first = sc.wait_token()
    second = sc.wait_token(other_than=first["access_token"], timeout=25)
    assert sc.requests(grant_type="refresh_token") == 1
    wait_for(  # the status patch follows the Secret write
        "Refreshed by RefreshToken",
        lambda: "RefreshToken" in condition(sc.cr(), "Refreshed").get("message", ""),
        timeout=5,
    )
    # Keycloak refuses the refresh token: fall back to client_credentials at once.
    sc.kc.inject(
        Fault(
            400,
            body=b'{"error":"invalid_grant","error_description":"Token is not active"}',
            times=1,
        )
    )
    sc.wait_token(other_than=second["access_token"], timeout=25)
    wait_for("fallback login", lambda: sc.requests(grant_type="client_credentials") == 2, timeout=5)
    sc.wait_condition("Refreshed", "True", "RefreshSucceeded")


def test_outage_keeps_the_old_token_and_recovers(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    sc.run()
    first = sc.wait_token()
    sc.kc.inject(Fault(503, headers={"Retry-After": "2"}, times=3))
    cr = sc.wait_condition("Refreshed", "False", "TokenEndpointUnavailable", timeout=25)
    assert condition(cr, "Ready")["status"] == "True"
    assert sc.token() == first
    sc.wait_token(other_than=first["access_token"], timeout=20)
    sc.wait_condition("Refreshed", "True", "RefreshSucceeded")
    assert sc.kc.count(status=503) == 3


def test_metrics_and_health(sc: Scenario) -> None:
    sc.source()
    sc.credential()
    op = sc.run()
    data = sc.wait_token()
    wait_for(
        "ready gauge",
        lambda: op.metric("itcare_credential_ready", namespace=sc.namespace, name="billing") == 1.0,
    )
    expiry = op.metric(
        "itcare_token_expiration_timestamp_seconds", namespace=sc.namespace, name="billing"
    )
    assert expiry == pytest.approx(parse_time(data["expires_at"]).timestamp(), abs=1)
    next_refresh = op.metric(
        "itcare_token_next_refresh_timestamp_seconds", namespace=sc.namespace, name="billing"
    )
    assert next_refresh is not None and next_refresh < expiry
    assert op.metric("itcare_credentials", state="ready") == 1.0
    assert op.metric("itcare_build_info", version=itcare_operator.__version__) == 1.0
    assert op.metric("itcare_token_request_duration_seconds_count", result="success") == 1.0
    assert (op.metric("itcare_kube_requests_total", verb="create", resource="secrets") or 0) >= 1
    assert (
        op.metric("itcare_kube_requests_total", verb="patch", resource="itcarecredentials/status")
        or 0
    ) >= 1
    wait_for(
        "loop lag samples", lambda: (op.metric("itcare_event_loop_lag_seconds_count") or 0) > 0
    )
    text = op.metrics()
    assert 'itcare_token_refresh_total{grant="ClientCredentials",name="billing"' in text
    lifetime = op.metric("itcare_token_lifetime_seconds", namespace=sc.namespace, name="billing")
    received = sc.wait_condition("Ready", "True", "TokenValid")["status"]["lastRefreshTime"]
    assert lifetime == pytest.approx(expiry - parse_time(received).timestamp(), abs=2)
    for gauge in ("itcare_credential_suspended", "itcare_credential_consecutive_failures"):
        assert op.metric(gauge, namespace=sc.namespace, name="billing") is None, gauge
    assert (op.metric("process_resident_memory_bytes") or 0) > 10 * 2**20
    assert (op.metric("process_open_fds") or 0) > 0
    assert "_created" not in text
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=2) as resp:
        assert resp.status == 200


def test_log_format_json_is_one_object_per_line(sc: Scenario) -> None:
    import json

    sc.source()
    sc.credential()
    sc.source(
        name="wrong-account",
        data={"client-id": sc.client()["client_id"], "client-secret": "not-the-secret"},
    )
    sc.credential(name="rejected", source="wrong-account", target="rejected-token")
    op = sc.run()
    sc.wait_token()
    sc.wait_condition("Refreshed", "False", "UnauthorizedClient", name="rejected")
    lines = [line for line in op.output().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]
    assert any("token refreshed" in d["message"] for d in docs)
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    # Lines about a credential name it, and what happened, as fields.
    about = {
        (d.get("name"), d.get("event")): d for d in docs if d.get("kind") == "ITCareCredential"
    }
    refreshed = about[("billing", "TokenRefreshed")]
    assert refreshed["namespace"] == sc.namespace and refreshed["level"] == "info"
    failed = about[("rejected", "RefreshFailed")]
    assert failed["namespace"] == sc.namespace and failed["reason"] == "UnauthorizedClient"


def test_kubectl_columns(sc: Scenario, kubectl: Callable[..., Any]) -> None:
    sc.source()
    sc.credential()
    sc.run()
    sc.wait_condition("Ready", "True", "TokenValid")
    out = kubectl("get", "itccred", "-n", sc.namespace).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "REASON", "EXPIRES", "LAST", "REFRESH", "AGE"]
    assert row.split()[:3] == ["billing", "True", "TokenValid"]
    wide = kubectl("get", "itcare", "-n", sc.namespace, "-o", "wide").stdout
    assert "itcare-token" in wide and "NEXT REFRESH" in wide
    explain = kubectl("explain", "itccred.spec.refreshBeforeExpirySeconds").stdout
    assert "one third" in explain


def test_operator_survives_a_credential_the_schema_cannot_catch(
    sc: Scenario, kubectl: Callable[..., Any]
) -> None:
    """A credential with non-UTF-8 secret values gets a reason; others keep working."""
    sc.core.create_namespaced_secret(
        sc.namespace,
        {
            "metadata": {"name": "binary", "labels": {"itcare.cegedim.cloud/api-account": "true"}},
            "data": {
                "client-id": base64.b64encode(b"\xff\xfe").decode(),
                "client-secret": base64.b64encode(b"x").decode(),
            },
        },
    )
    sc.source()
    sc.credential(name="broken", source="binary", target="broken-token")
    sc.credential()
    sc.run()
    cr = sc.wait_condition("Refreshed", "False", "SourceSecretInvalid", name="broken")
    assert "UTF-8" in condition(cr, "Refreshed")["message"]
    sc.wait_condition("Ready", "True", "TokenValid")
    with pytest.raises(ApiException):
        sc.core.read_namespaced_secret("broken-token", sc.namespace)
