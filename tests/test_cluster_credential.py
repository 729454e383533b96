"""ClusterITCareCredential on the real control plane and the real Keycloak.

The operator runs cluster-wide (the only mode that serves the cluster kind) and
allows only this module's own Keycloak proxy as token URL, so credentials left by
other tests send nothing and the proxy's counts are this module's alone.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from itcare_operator.token import parse_time
from tests.environment import Environment
from tests.proxy import KeycloakProxy
from tests.testenv import (
    GROUP,
    ROOT,
    SOURCE_LABEL,
    VERSION,
    OperatorProcess,
    assert_no_leaks,
    condition,
    dump,
    make_source_secret,
    secret_data,
    wait_for,
)

pytestmark = [pytest.mark.env, pytest.mark.e2e]

CLUSTER_CRD = ROOT / "crds" / "clusteritcarecredentials.itcare.cegedim.cloud.yaml"
CPLURAL = "clusteritcarecredentials"
FINALIZER = "itcare.cegedim.cloud/cleanup"
TEST, SECOND, DEMO = "itcare-test", "itcare-second", "itcare-demo"


@pytest.fixture(scope="session")
def cluster_crd(kubectl: Callable[..., Any]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CLUSTER_CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CPLURAL}.{GROUP}")


@pytest.fixture(scope="module")
def own_kc(testenv: Environment) -> Iterator[KeycloakProxy]:
    proxy = KeycloakProxy(testenv.keycloak_url).start()
    yield proxy
    proxy.stop()


@dataclasses.dataclass
class Cluster:
    """A platform namespace with the API account, team namespaces, the operator."""

    core: kubernetes.client.CoreV1Api
    custom: kubernetes.client.CustomObjectsApi
    kc: KeycloakProxy
    realm: dict[str, Any]
    start_operator: Callable[..., OperatorProcess]
    platform: str = ""
    team: str = dataclasses.field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = dataclasses.field(default_factory=list)
    credentials: list[str] = dataclasses.field(default_factory=list)
    operator: OperatorProcess | None = None

    def client(self, name: str = TEST) -> dict[str, Any]:
        return self.realm["clients"][name]  # type: ignore[no-any-return]

    def namespace(self, suffix: str, *, selected: bool = True) -> str:
        name = f"c-{self.team}-{suffix}"
        labels = {"itcare-test/team": self.team} if selected else {}
        self.core.create_namespace({"metadata": {"name": name, "labels": labels}})
        self.namespaces.append(name)
        return name

    def label(self, namespace: str, selected: bool) -> None:
        value = self.team if selected else None
        self.core.patch_namespace(namespace, {"metadata": {"labels": {"itcare-test/team": value}}})

    def credential(self, name: str = "org", *, source_namespace: str = "", **spec: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterITCareCredential",
            "metadata": {"name": f"{name}-{self.team}"},
            "spec": {
                "clientSecretRef": {
                    "name": "itcare-api-account",
                    "namespace": source_namespace or self.platform,
                },
                "tokenURL": self.kc.token_url,
                "targetSecret": {"name": "itcare-token", "labels": {"team": "a"}},
                "namespaceSelector": {"matchLabels": {"itcare-test/team": self.team}},
                **spec,
            },
        }
        self.custom.create_cluster_custom_object(GROUP, VERSION, CPLURAL, body)
        self.credentials.append(f"{name}-{self.team}")

    def cr(self, name: str = "org") -> dict[str, Any]:
        return self.custom.get_cluster_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, CPLURAL, f"{name}-{self.team}"
        )

    def run(self, *args: str) -> OperatorProcess:
        self.operator = self.start_operator(
            "--standalone",
            "--cluster-credentials",
            f"--allowed-source-namespace={self.platform}",
            f"--allowed-token-url={self.kc.base_url}/auth/realms/cloud/",
            *args,
            extra_env={"POD_NAMESPACE": self.platform},
        )
        return self.operator

    def token(self, namespace: str) -> dict[str, str] | None:
        return secret_data(self.core, namespace, "itcare-token")

    def wait_tokens(
        self, namespaces: list[str], *, other_than: str | None = None, timeout: float = 30
    ) -> str:
        """Wait until every namespace holds the same token (not ``other_than``)."""

        def same() -> str | None:
            tokens = {(self.token(ns) or {}).get("access_token") for ns in namespaces}
            (token,) = tokens if len(tokens) == 1 else (None,)
            return token if token and token != other_than else None

        return wait_for(f"one token in {namespaces}", same, timeout)

    def wait_condition(
        self, type_: str, status: str, reason: str, timeout: float = 30, name: str = "org"
    ) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            cr = self.cr(name)
            cond = condition(cr, type_)
            return cr if cond.get("status") == status and cond.get("reason") == reason else None

        return wait_for(f"{type_}={status}/{reason}", matches, timeout)

    def requests(self, client: str = TEST) -> int:
        return self.kc.count(self.client(client)["client_id"])

    def events(self, reason: str | None = None) -> list[Any]:
        """Events of this test's ClusterITCareCredentials (cluster-scoped: in "default")."""
        return [
            e
            for e in self.core.list_namespaced_event("default").items
            if e.involved_object.name in self.credentials and (reason is None or e.reason == reason)
        ]

    def scan_for_leaks(self) -> None:
        haystacks = [self.operator.output() if self.operator else ""]
        haystacks += [dump(e.to_dict()) for e in self.events()]
        for name in self.credentials:
            with contextlib.suppress(ApiException):
                cr = self.custom.get_cluster_custom_object(GROUP, VERSION, CPLURAL, name)
                haystacks.append(dump(cr.get("status")))
        if self.operator and self.operator.proc and self.operator.proc.poll() is None:
            haystacks.append(self.operator.metrics())
        needles = [*self.kc.issued]
        for client in self.realm["clients"].values():
            needles += [client["client_id"], client["client_secret"]]
        assert_no_leaks(haystacks, needles)


@pytest.fixture
def cl(
    namespace: str,
    cluster_crd: None,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    own_kc: KeycloakProxy,
    realm: dict[str, Any],
    run_operator: Callable[..., OperatorProcess],
    request: pytest.FixtureRequest,
) -> Iterator[Cluster]:
    own_kc.reset()
    scenario = Cluster(core, custom, own_kc, realm, run_operator, platform=namespace)
    make_source_secret(core, namespace, scenario.client())
    yield scenario
    if getattr(request.node, "rep_call", None) and request.node.rep_call.passed:
        scenario.scan_for_leaks()
    for name in scenario.credentials:  # while the operator still runs: it cleans up
        with contextlib.suppress(ApiException):
            custom.delete_cluster_custom_object(GROUP, VERSION, CPLURAL, name)
    for name in scenario.credentials:
        with contextlib.suppress(ApiException, AssertionError):
            wait_for(
                f"{name} deleted",
                lambda n=name: (
                    not custom.list_cluster_custom_object(  # type: ignore[misc]
                        GROUP, VERSION, CPLURAL, field_selector=f"metadata.name={n}"
                    )["items"]
                ),
                timeout=15,
            )
        with contextlib.suppress(ApiException):  # the operator is gone: release it
            custom.patch_cluster_custom_object(
                GROUP, VERSION, CPLURAL, name, {"metadata": {"finalizers": None}}
            )
    for ns in scenario.namespaces:
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


def test_fan_out_to_selected_namespaces_with_one_token_per_cycle(cl: Cluster) -> None:
    a, b = cl.namespace("a"), cl.namespace("b")
    named = cl.namespace("named", selected=False)
    other = cl.namespace("other", selected=False)
    cl.credential(namespaces=[named])
    op = cl.run()
    token = cl.wait_tokens([a, b, named])
    assert cl.token(other) is None, "a namespace outside the selection got the token"
    assert cl.token(cl.platform) is None
    assert cl.requests() == 1, "one token for every namespace"
    secret = cl.core.read_namespaced_secret("itcare-token", a)
    assert secret.type == "Opaque"
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "itcare-token-operator"
    assert secret.metadata.labels["itcare.cegedim.cloud/cluster-credential"] == f"org-{cl.team}"
    assert secret.metadata.labels["team"] == "a"
    assert (
        secret.metadata.annotations["itcare.cegedim.cloud/owner-uid"] == cl.cr()["metadata"]["uid"]
    )
    assert not secret.metadata.owner_references  # cleanup is the operator's (finalizer)
    data = cl.token(a)
    assert data is not None and data["authorization"] == f"Bearer {token}"
    assert set(data) == {"access_token", "token_type", "expires_at", "authorization"}
    cr = cl.wait_condition("Synced", "True", "NamespacesSynced")
    assert cr["status"]["selectedNamespaces"] == 3 and cr["status"]["syncedNamespaces"] == 3
    assert cr["status"]["failedNamespaces"] == [] and cr["status"]["failedNamespaceCount"] == 0
    assert condition(cr, "Ready")["reason"] == "TokenValid"
    assert FINALIZER in cr["metadata"]["finalizers"]
    # One refresh cycle (30 s tokens): one new token, in every namespace, one request.
    new = cl.wait_tokens([a, b, named], other_than=token, timeout=30)
    assert new != token and cl.requests() == 2
    # Metrics: per credential with scope="cluster", not per namespace.
    name = f"org-{cl.team}"
    assert op.metric("itcare_credential_ready", name=name, scope="cluster", namespace="") == 1.0
    assert op.metric("itcare_cluster_credential_namespaces", name=name, state="synced") == 3.0
    lines = [line for line in op.metrics().splitlines() if f'name="{name}"' in line]
    assert lines and not any(a in line or b in line for line in lines)
    issued = cl.events("TokenIssued")
    assert issued and issued[0].involved_object.kind == "ClusterITCareCredential"


def test_namespaces_join_and_leave_the_selection(cl: Cluster) -> None:
    a = cl.namespace("a")
    cl.credential()
    cl.run()
    token = cl.wait_tokens([a])
    late = cl.namespace("late", selected=False)
    time.sleep(1)
    assert cl.token(late) is None
    cl.label(late, True)
    labelled_at = time.monotonic()
    cl.wait_tokens([a, late], timeout=10)
    assert time.monotonic() - labelled_at < 10
    created = cl.namespace("created")  # a new namespace that matches at once
    cl.wait_tokens([a, late, created], timeout=10)
    assert cl.requests() <= 2  # no token per namespace (at most one refresh meanwhile)
    cl.label(late, False)
    wait_for("copy deleted when the label goes", lambda: cl.token(late) is None, timeout=10)
    assert cl.token(a) is not None
    wait_for("counts updated", lambda: cl.cr()["status"]["selectedNamespaces"] == 2)
    cl.wait_condition("Synced", "True", "NamespacesSynced")
    assert cl.token(a) is not None and token


def test_deleting_the_credential_deletes_every_copy(cl: Cluster) -> None:
    a, b = cl.namespace("a"), cl.namespace("b")
    cl.credential()
    op = cl.run()
    cl.wait_tokens([a, b])
    for ns in (a, b):  # no ownerReference: garbage collection cannot be what deletes them
        assert not cl.core.read_namespaced_secret("itcare-token", ns).metadata.owner_references
    cl.custom.delete_cluster_custom_object(GROUP, VERSION, CPLURAL, f"org-{cl.team}")
    wait_for("copies deleted", lambda: cl.token(a) is None and cl.token(b) is None, timeout=15)
    wait_for(
        "the credential gone once its finalizer is removed",
        lambda: (
            not cl.custom.list_cluster_custom_object(
                GROUP, VERSION, CPLURAL, field_selector=f"metadata.name=org-{cl.team}"
            )["items"]
        ),
        timeout=15,
    )
    wait_for(
        "per-credential series removed",
        lambda: op.metric("itcare_credential_ready", name=f"org-{cl.team}") is None,
    )


def test_source_namespace_not_allowed_sends_nothing(cl: Cluster) -> None:
    a = cl.namespace("a")
    elsewhere = cl.namespace("accounts", selected=False)
    make_source_secret(cl.core, elsewhere, cl.client())
    cl.credential(source_namespace=elsewhere)
    cl.run()
    cr = cl.wait_condition("Refreshed", "False", "SourceNamespaceNotAllowed")
    assert "--allowed-source-namespace" in condition(cr, "Refreshed")["message"]
    assert cr["status"]["summaryReason"] == "SourceNamespaceNotAllowed"
    assert cl.requests() == 0 and cl.token(a) is None
    warnings = cl.events("SourceNamespaceNotAllowed")
    assert warnings and warnings[0].type == "Warning"


def test_a_conflict_in_one_namespace_does_not_block_the_others(cl: Cluster) -> None:
    a, taken, c = cl.namespace("a"), cl.namespace("taken"), cl.namespace("c")
    cl.core.create_namespaced_secret(
        taken, {"metadata": {"name": "itcare-token"}, "stringData": {"mine": "keep"}}
    )
    cl.credential()
    cl.run()
    cl.wait_tokens([a, c])
    assert cl.token(taken) == {"mine": "keep"}, "a Secret we do not own was overwritten"
    cr = cl.wait_condition("Synced", "False", "NamespacesFailed")
    assert cr["status"]["failedNamespaces"] == [
        {
            "namespace": taken,
            "reason": "TargetSecretConflict",
            "message": "Secret itcare-token exists and is not owned by this "
            "ClusterITCareCredential",
        }
    ]
    assert cr["status"]["syncedNamespaces"] == 2 and cr["status"]["selectedNamespaces"] == 3
    assert condition(cr, "Ready")["status"] == "True"
    assert cr["status"]["summaryReason"] == "NamespacesFailed"
    # The owner of the other Secret gives the name up: the copy follows.
    cl.core.delete_namespaced_secret("itcare-token", taken)
    cl.wait_tokens([a, taken, c], timeout=40)
    cl.wait_condition("Synced", "True", "NamespacesSynced")


def test_source_rotation_reaches_every_namespace(cl: Cluster) -> None:
    a, b = cl.namespace("a"), cl.namespace("b")
    cl.credential()
    cl.run()
    first = cl.wait_tokens([a, b])
    second = cl.client(SECOND)
    cl.core.patch_namespaced_secret(
        "itcare-api-account",
        cl.platform,
        {
            "data": {
                "client-id": base64.b64encode(second["client_id"].encode()).decode(),
                "client-secret": base64.b64encode(second["client_secret"].encode()).decode(),
            }
        },
    )
    rotated_at = time.monotonic()
    cl.wait_tokens([a, b], other_than=first, timeout=10)
    assert time.monotonic() - rotated_at < 10
    assert cl.requests(SECOND) == 1


def test_drift_is_repaired_and_restart_mints_nothing(cl: Cluster) -> None:
    demo = cl.client(DEMO)  # 90 s tokens: the refresh is a minute away
    cl.core.replace_namespaced_secret(
        "itcare-api-account",
        cl.platform,
        {
            "metadata": {"name": "itcare-api-account", "labels": SOURCE_LABEL},
            "stringData": {"client-id": demo["client_id"], "client-secret": demo["client_secret"]},
        },
    )
    a, b = cl.namespace("a"), cl.namespace("b")
    cl.credential()
    op = cl.run()
    token = cl.wait_tokens([a, b])
    assert cl.requests(DEMO) == 1
    cl.core.delete_namespaced_secret("itcare-token", b)
    restored = cl.wait_tokens([a, b], timeout=10)
    assert restored == token and cl.requests(DEMO) == 1, "drift repair minted a token"
    before = cl.wait_condition("Synced", "True", "NamespacesSynced")["status"]
    assert op.stop() == 0
    restarted = cl.run()
    time.sleep(3)
    assert cl.requests(DEMO) == 1, "a restart minted a token although the stored one was valid"
    assert cl.wait_tokens([a, b]) == token
    after = cl.cr()["status"]
    # The schedule resumes where it was: same expiry, same (jittered) refresh time.
    assert after["tokenExpiresAt"] == before["tokenExpiresAt"]
    assert after["nextRefreshTime"] == before["nextRefreshTime"]
    assert (
        restarted.metric("itcare_token_next_refresh_timestamp_seconds", name=f"org-{cl.team}")
        == parse_time(before["nextRefreshTime"]).timestamp()
    )


def test_a_forged_copy_does_not_poison_the_namespaces_after_a_restart(cl: Cluster) -> None:
    """A tenant of one selected namespace edits its copy (token with CR/LF, expiry in
    2099): the restarted operator does not reuse it nor copy it anywhere; it keeps the
    token the status proves (restart safety: no request) and repairs the forged copy."""
    a, b = cl.namespace("a"), cl.namespace("b")
    cl.credential()
    op = cl.run()
    token = cl.wait_tokens([a, b])
    before = wait_for(
        "the status proof",
        lambda: (
            (cl.cr().get("status") or {})
            if cl.cr().get("status", {}).get("tokenFingerprint")
            else None
        ),
    )
    assert op.stop() == 0
    forged, far = "forged\r\nX-Injected: 1", "2099-01-01T00:00:00Z"
    cl.core.patch_namespaced_secret(
        "itcare-token",
        b,
        {
            "metadata": {"annotations": {"itcare.cegedim.cloud/expires-at": far}},
            "stringData": {
                "access_token": forged,
                "expires_at": far,
                "authorization": f"Bearer {forged}",
            },
        },
    )
    cl.run()
    assert cl.wait_tokens([a, b], timeout=30) == token, "the forged copy spread"
    assert cl.requests() == 1  # the genuine token, proven by the status, is kept
    after = cl.wait_condition("Synced", "True", "NamespacesSynced")["status"]
    assert after["tokenExpiresAt"] == before["tokenExpiresAt"]
    assert after["nextRefreshTime"] == before["nextRefreshTime"]
    assert cl.token(b) == cl.token(a)  # expiry key and annotation repaired too
