"""Issue 13, service tier: the controller against tenant-written input.

The in-memory Kubernetes fake and MockTransport endpoint of :mod:`tests.fake_kube`; each
test fails on the code before its fix (forged stored tokens, forced-refresh budget,
refused target Secrets, shared targets, the existence oracle).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pytest

from itcare_operator.kube_api import Invalid
from itcare_operator.metrics import Metrics
from itcare_operator.namespaced import Controller
from itcare_operator.settings import Settings
from itcare_operator.spec import InvalidSpec, parse_spec
from itcare_operator.target_secret import trusted_token
from itcare_operator.token import digest, format_time
from itcare_operator.token_endpoint import TokenEndpoint, TokenEndpoints
from tests.fake_kube import (
    URL,
    Clock,
    FakeKube,
    feed_source,
    merge_patch,
    source_secret,
    token_handler,
)

# ``setup`` drives ``Controller.reconcile`` on a credential the fake does not hold, so
# its status patches are kept in ``kube.status`` (the last one, ``None`` dropped as a
# merge patch would).
NS = "team-a"
CREDENTIAL = {
    "metadata": {"namespace": NS, "name": "billing", "uid": "c1", "generation": 1},
    "spec": {
        "clientSecretRef": {"name": "acct"},
        "tokenURL": URL,
        "targetSecret": {"name": "itcare-token"},
    },
}


VERBS = {
    "get_secret": "get",
    "create_secret": "create",
    "replace_secret": "update",
    "patch_status": "patch-status",
}


class StatusKube(FakeKube):
    """The fake, plus the last status patched for a credential it does not store;
    ``calls`` name the Secret calls by their HTTP verb, as those modules expect."""

    def __init__(self) -> None:
        super().__init__()
        self.status: dict[str, Any] = {}

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        if (namespace, name) in self.credentials:
            await super().patch_status(namespace, name, status)
        else:
            self._call("patch_status", name)
        self.status = merge_patch({}, dict(status))

    def _call(self, method: str, name: str) -> None:
        try:
            super()._call(method, name)
        finally:
            self.calls[-1] = (VERBS.get(method, method), name)


def setup(
    status: Mapping[str, Any] | None = None, settings: Settings | None = None
) -> tuple[Controller, StatusKube, Clock, list[int]]:
    """A controller after its start-up listings; ``status``: the credential's, as listed."""
    kube, clock = StatusKube(), Clock()
    requests: list[int] = []
    transport = token_handler(requests)
    endpoints = TokenEndpoints(lambda url, ca: TokenEndpoint(url, transport=transport, clock=clock))
    controller = Controller(
        settings or Settings(),
        kube,  # type: ignore[arg-type]
        endpoints,
        Metrics(),
        clock=clock,
        rand=lambda: 0.0,
    )
    source = source_secret(NS)
    source["metadata"]["uid"] = "s1"
    kube.put(NS, source)
    feed_source(controller, None, source)  # the watch's initial listing
    controller.credential_event(None, {**CREDENTIAL, "status": dict(status or {})})
    return controller, kube, clock, requests


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def refreshed(status: Mapping[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == "Refreshed")


# -- 1. a stored token is reused only if the status proves it is ours ----------------------
FORGERIES = {
    "token and far expiry": {"token": "forged\r\nX-Injected: 1", "expires": "2099-01-01T00:00:00Z"},
    "printable token, real expiry": {"token": "forged-but-printable"},
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
async def test_restart_ignores_a_forged_target_secret(forgery: str) -> None:
    controller, kube, clock, requests = setup()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    assert requests == [1]
    forged = copy.deepcopy(kube.secrets[(NS, "itcare-token")])
    change = FORGERIES[forgery]
    if "token" in change:
        forged["data"]["access_token"] = b64(change["token"])
        forged["data"]["authorization"] = b64(f"Bearer {change['token']}")
    if "expires" in change:
        forged["data"]["expires_at"] = b64(change["expires"])
        forged["metadata"]["annotations"]["itcare.cegedim.cloud/expires-at"] = change["expires"]
    # A new operator process: the status the first one wrote, the forged Secret.
    fresh, kube2, _, requests2 = setup(status=kube.status)
    fresh._clock = clock
    kube2.secrets[(NS, "itcare-token")] = copy.deepcopy(forged)
    fresh.target_secret_event(None, forged)
    state = fresh.credentials[(NS, "billing")]
    await fresh.reconcile(state)
    assert requests2 == [1], "the forged token was reused instead of obtaining a new one"
    data = kube2.secrets[(NS, "itcare-token")]["data"]
    assert base64.b64decode(data["access_token"]) == b"tok-1"  # the forgery is overwritten
    assert state.refresh_at is not None and state.refresh_at < clock.now + dt.timedelta(hours=1)


async def test_restart_reuses_a_genuine_token_with_the_status_receive_time() -> None:
    controller, kube, clock, _requests = setup()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    stored = copy.deepcopy(kube.secrets[(NS, "itcare-token")])
    # Someone moves the refreshed-at annotation: the schedule must not follow it.
    stored["metadata"]["annotations"]["itcare.cegedim.cloud/refreshed-at"] = "2026-11-28T09:40:01Z"
    fresh, kube2, _, requests2 = setup(status=kube.status)
    fresh._clock = clock
    kube2.secrets[(NS, "itcare-token")] = copy.deepcopy(stored)
    fresh.target_secret_event(None, stored)
    state = fresh.credentials[(NS, "billing")]
    await fresh.reconcile(state)
    assert requests2 == []  # restart safety holds for the genuine token
    assert state.token is not None and state.token.received_at == clock.now
    assert kube.status["tokenFingerprint"] == digest("tok-1")


async def test_restart_takes_the_expiry_from_the_status_not_from_an_edited_secret() -> None:
    """The genuine token with a far expiry written into its Secret: reused (its digest
    is the status's), with the status's expiry; the Secret is repaired to it."""
    controller, kube, clock, _requests = setup()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    expires = kube.status["tokenExpiresAt"]
    forged = copy.deepcopy(kube.secrets[(NS, "itcare-token")])
    forged["data"]["expires_at"] = b64("2099-01-01T00:00:00Z")
    forged["metadata"]["annotations"]["itcare.cegedim.cloud/expires-at"] = "2099-01-01T00:00:00Z"
    fresh, kube2, _, requests2 = setup(status=kube.status)
    fresh._clock = clock
    kube2.secrets[(NS, "itcare-token")] = copy.deepcopy(forged)
    fresh.target_secret_event(None, forged)
    state = fresh.credentials[(NS, "billing")]
    await fresh.reconcile(state)
    assert requests2 == [], "the genuine token was not reused"
    assert state.token is not None and format_time(state.token.expires_at) == expires
    repaired = kube2.secrets[(NS, "itcare-token")]
    assert base64.b64decode(repaired["data"]["expires_at"]).decode() == expires


def test_trusted_token_needs_the_status_proof() -> None:
    secret = {
        "metadata": {"annotations": {"itcare.cegedim.cloud/expires-at": "2026-11-28T10:20:00Z"}},
        "data": {"access_token": b64("abc"), "expires_at": b64("2026-11-28T10:20:00Z")},
    }
    keys = parse_spec(CREDENTIAL["spec"]).keys
    proof = {"tokenFingerprint": digest("abc"), "tokenExpiresAt": "2026-11-28T10:20:00Z"}
    assert trusted_token(secret, keys, proof) is not None
    assert trusted_token(secret, keys, None) is None
    assert trusted_token(secret, keys, {**proof, "tokenFingerprint": digest("abd")}) is None
    # The expiry is the status's: the Secret's own is never read.
    later = trusted_token(secret, keys, {**proof, "tokenExpiresAt": "2026-11-28T10:20:01Z"})
    assert later is not None and format_time(later.expires_at) == "2026-11-28T10:20:01Z"


# -- 8. every forced refresh shares one per-credential limit -------------------------------
async def test_spec_edits_mint_at_most_one_token_per_interval() -> None:
    controller, kube, clock, requests = setup()
    key = (NS, "billing")
    await controller.reconcile(controller.credentials[key])
    assert requests == [1]
    for generation in range(2, 8):  # six edits (a label toggled), one per second
        clock.now += dt.timedelta(seconds=1)
        body = copy.deepcopy(CREDENTIAL)
        body["metadata"]["generation"] = generation
        body["spec"]["targetSecret"]["labels"] = {"toggle": str(generation % 2)}
        controller.credential_event("MODIFIED", body)
        await controller.reconcile(controller.credentials[key])
    assert len(requests) == 2, f"{len(requests) - 1} tokens for six edits within 6 s"
    labels = kube.secrets[(NS, "itcare-token")]["metadata"]["labels"]
    assert labels["toggle"] == "1"  # the edit itself is applied at once, with the same token
    clock.now += dt.timedelta(seconds=10)
    await controller.reconcile(controller.credentials[key])
    assert len(requests) == 3  # the pending forced refresh happens after the interval


async def test_the_annotation_and_spec_edits_share_the_limit() -> None:
    controller, _kube, clock, requests = setup()
    key = (NS, "billing")
    await controller.reconcile(controller.credentials[key])
    body = copy.deepcopy(CREDENTIAL)
    body["metadata"]["annotations"] = {"itcare.cegedim.cloud/refresh-requested-at": "a"}
    controller.credential_event("MODIFIED", body)
    await controller.reconcile(controller.credentials[key])
    assert len(requests) == 2
    clock.now += dt.timedelta(seconds=2)
    body = copy.deepcopy(body)
    body["metadata"]["generation"] = 2
    body["spec"]["suspend"] = False
    controller.credential_event("MODIFIED", body)
    await controller.reconcile(controller.credentials[key])
    assert len(requests) == 2


# -- 9. target labels and annotations the API server refuses -------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("labels", {"bad key": "x"}),
        ("labels", {"-starts-with-dash": "x"}),
        ("labels", {"Example.COM/x": "x"}),
        ("labels", {"a/b/c": "x"}),
        ("labels", {"x" * 64: "x"}),
        ("labels", {"ok": "not a valid value"}),
        ("labels", {"ok": "v" * 64}),
        ("annotations", {"bad key": "x"}),
        ("annotations", {"/x": "x"}),
        ("annotations", {"big": "x" * 300_000}),
    ],
)
def test_bad_target_metadata_is_an_invalid_spec(field: str, value: dict[str, str]) -> None:
    spec = copy.deepcopy(CREDENTIAL["spec"])
    spec["targetSecret"][field] = value
    with pytest.raises(InvalidSpec, match=field):
        parse_spec(spec)


def test_good_target_metadata_is_accepted() -> None:
    spec = copy.deepcopy(CREDENTIAL["spec"])
    spec["targetSecret"]["labels"] = {"app.kubernetes.io/part-of": "billing", "empty": ""}
    spec["targetSecret"]["annotations"] = {"example.com/note": "any text at all\n"}
    assert parse_spec(spec).target_labels["empty"] == ""


async def test_a_refused_target_write_is_terminal_until_the_spec_changes() -> None:
    controller, kube, _clock, requests = setup()

    async def refuse(ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raise Invalid("create Secret itcare-token: 422 Unprocessable Entity (Invalid)", 422)

    kube.create_secret = refuse  # type: ignore[method-assign]
    key = (NS, "billing")
    await controller.reconcile(controller.credentials[key])
    cond = refreshed(kube.status)
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "refused the target Secret" in cond["message"]
    token = controller.credentials[key].token
    assert token is not None  # kept: the next write is at its expiry or on a spec change
    assert controller.scheduler.due_at(key) == token.expires_at.timestamp(), "a 422 is retried"
    assert requests == [1]


# -- 10. the owner keeps the target index ---------------------------------------------------
async def test_a_second_credential_on_the_target_does_not_steal_drift_repair() -> None:
    controller, kube, clock, requests = setup()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    second = copy.deepcopy(CREDENTIAL)
    second["metadata"].update(name="second", uid="c2")
    controller.credential_event(None, second)
    await controller.reconcile(controller.credentials[(NS, "second")])
    assert refreshed(kube.status)["reason"] == "TargetSecretConflict"
    controller.scheduler.cancel((NS, "billing"))
    edited = copy.deepcopy(kube.secrets[(NS, "itcare-token")])
    edited["data"]["access_token"] = b64("tampered")
    edited = kube.put(NS, edited)
    controller.target_secret_event("MODIFIED", edited)
    due = controller.scheduler.due_at((NS, "billing"))
    assert due is not None and due <= clock.now.timestamp(), "the owner was not woken"
    await controller.reconcile(controller.credentials[(NS, "billing")])
    data = kube.secrets[(NS, "itcare-token")]["data"]
    assert base64.b64decode(data["access_token"]) == b"tok-1"  # repaired, no new token
    assert requests == [1]


# -- 11. no existence oracle through the source Secret ---------------------------------------
async def test_an_unlabelled_source_reads_nothing_and_looks_absent() -> None:
    messages = {}
    for name, exists in (("exists-unlabelled", True), ("does-not-exist", False)):
        controller, kube, _clock, requests = setup()
        if exists:
            kube.put(NS, {"metadata": {"name": name}, "data": {"client-id": b64("x")}})
        body = copy.deepcopy(CREDENTIAL)
        body["metadata"].update(name="probe", uid="p1")
        body["spec"]["clientSecretRef"]["name"] = name
        body["spec"]["targetSecret"]["name"] = "probe-token"
        controller.credential_event(None, body)
        await controller.reconcile(controller.credentials[(NS, "probe")])
        assert ("get", name) not in kube.calls, "the operator read a Secret it may not read"
        cond = refreshed(kube.status)
        messages[exists] = (cond["reason"], cond["message"].replace(name, "<name>"))
        assert requests == []
    assert messages[True] == messages[False]


async def test_without_the_label_requirement_the_source_is_read() -> None:
    settings = dataclasses.replace(Settings(), require_source_label=False)
    controller, kube, _clock, requests = setup(settings=settings)
    controller.sources.clear()
    await controller.reconcile(controller.credentials[(NS, "billing")])
    assert ("get", "acct") in kube.calls and requests == [1]
