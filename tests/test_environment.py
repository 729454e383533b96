"""Proof that the test environment is the real thing (API server validation, garbage
collection, RBAC, Keycloak, helm) — every later end-to-end test stands on these."""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from itcare_operator.errors import Reason, RequestRejected
from itcare_operator.token import ClientCredentials
from itcare_operator.token_endpoint import Grant, TokenEndpoint
from tests.environment import Environment
from tests.testenv import GROUP, PLURAL, VERSION, wait_for

pytestmark = pytest.mark.env

VALID: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ITCareCredential",
    "metadata": {"name": "valid"},
    "spec": {"clientSecretRef": {"name": "account"}, "targetSecret": {"name": "token"}},
}


def variant(name: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    body["metadata"]["name"] = name
    for path, value in changes.items():
        node = body["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return body


def test_crd_defaults_are_applied_by_the_api_server(
    crd: None, custom: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, VALID)
    spec = created["spec"]
    assert spec["clientSecretRef"] == {
        "name": "account",
        "clientIdKey": "client-id",
        "clientSecretKey": "client-secret",
    }
    assert spec["tokenURL"].startswith("https://accounts.cegedim.cloud/auth/realms/cloud/")
    assert spec["grant"] == "ClientCredentials" and spec["suspend"] is False


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (variant("a", clientSecretRef=None), "clientSecretRef: Required"),
        (variant("b", targetSecret=None), "targetSecret: Required"),
        (variant("c", targetSecret__name="account"), "must differ from clientSecretRef.name"),
        (variant("d", refreshBeforeExpirySeconds=10), "should be greater than or equal to 30"),
        (variant("e", refreshBeforeExpirySeconds=100000), "should be less than or equal to 86400"),
        (variant("f", tokenURL="http://keycloak.example/token"), "tokenURL must be https"),
        (variant("g", tokenURL="ftp://localhost/token"), "tokenURL must be https"),
        (variant("h", grant="Password"), "supported values"),
        (variant("i", targetSecret__name="Not_A_Name"), "targetSecret.name"),
        (
            variant("j", targetSecret__keys={"accessToken": "token", "tokenType": "token"}),
            "key names must be distinct",
        ),
        (variant("k", targetSecret__keys={"accessToken": "bad/key"}), "accessToken"),
        (
            variant(
                "l", clientSecretRef__clientIdKey="same", clientSecretRef__clientSecretKey="same"
            ),
            "must differ",
        ),
    ],
    ids=[
        "no-source",
        "no-target",
        "same-secret",
        "refresh-low",
        "refresh-high",
        "http-remote",
        "ftp",
        "grant",
        "target-name",
        "dup-keys",
        "bad-key",
        "same-source-keys",
    ],
)
def test_crd_rejects_invalid_resources(
    crd: None,
    custom: kubernetes.client.CustomObjectsApi,
    namespace: str,
    body: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert info.value.status == 422
    assert message in info.value.body


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/t",
        "http://127.0.0.1/t",
        "http://[::1]:9/t",
        "https://kc.example.com/auth/realms/cloud/protocol/openid-connect/token",
    ],
)
def test_crd_accepts_local_http_and_https(
    crd: None, custom: kubernetes.client.CustomObjectsApi, namespace: str, url: str
) -> None:
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, variant("ok", tokenURL=url)
    )


def test_garbage_collector_removes_dependents(
    core: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
            "stringData": {"k": "v"},
        },
    )
    core.delete_namespaced_config_map("owner", namespace)
    started = time.monotonic()

    def gone() -> bool:
        try:
            core.read_namespaced_secret("dependent", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("garbage collection of the dependent Secret", gone, timeout=60)
    assert time.monotonic() - started < 60


def test_rbac_is_enforced(
    testenv: Environment,
    core: kubernetes.client.CoreV1Api,
    api_client: kubernetes.client.ApiClient,
    namespace: str,
) -> None:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    config = kubernetes.client.Configuration()
    config.host = testenv.api_url
    config.ssl_ca_cert = str(testenv.directory / "pki" / "ca.crt")
    config.api_key = {"authorization": f"Bearer {token}"}
    as_sa = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))
    with pytest.raises(ApiException) as info:
        as_sa.list_namespaced_secret(namespace)
    assert info.value.status == 403
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "secret-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "secret-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    wait_for(
        "RBAC to allow the ServiceAccount",
        lambda: as_sa.list_namespaced_secret(namespace) is not None,
        timeout=30,
        retry_on=(403,),
    )
    with pytest.raises(ApiException) as info:
        as_sa.list_namespaced_config_map(namespace)
    assert info.value.status == 403


async def test_real_keycloak_issues_and_refreshes(realm: dict[str, Any]) -> None:
    client = realm["clients"]["itcare-test"]
    creds = ClientCredentials(client["client_id"], client["client_secret"])
    endpoint = TokenEndpoint(realm["token_url"])
    try:
        first = await endpoint.obtain(creds, grant=Grant.REFRESH_TOKEN)
        token = first.token
        assert token.refresh_token and token.refresh_expires_at
        assert (token.expires_at - token.received_at).total_seconds() == client["lifespan"]
        second = await endpoint.obtain(creds, grant=Grant.REFRESH_TOKEN, current=token)
        assert second.grant is Grant.REFRESH_TOKEN
        assert second.token.access_token != token.access_token
    finally:
        await endpoint.aclose()


@pytest.mark.parametrize(
    ("client_name", "secret", "reason", "text"),
    [
        (
            "itcare-test",
            "wrong",
            Reason.UNAUTHORIZED_CLIENT,
            "Invalid client or Invalid client credentials",
        ),
        (
            "itcare-disabled",
            None,
            Reason.INVALID_CLIENT,
            "Invalid client or Invalid client credentials",
        ),
        (
            "itcare-no-sa",
            None,
            Reason.UNAUTHORIZED_CLIENT,
            "Client not enabled to retrieve service account",
        ),
    ],
)
async def test_real_keycloak_errors(
    realm: dict[str, Any], client_name: str, secret: str | None, reason: Reason, text: str
) -> None:
    client = realm["clients"][client_name]
    endpoint = TokenEndpoint(realm["token_url"])
    try:
        with pytest.raises(RequestRejected) as info:
            await endpoint.client_credentials(
                ClientCredentials(client["client_id"], secret or client["client_secret"])
            )
    finally:
        await endpoint.aclose()
    assert info.value.reason is reason and info.value.status_code == 401
    assert text in str(info.value)


def test_helm_lints_and_renders_a_chart(
    helm: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    helm("create", str(tmp_path / "trivial"))
    lint = helm("lint", "--strict", str(tmp_path / "trivial"))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    rendered = helm("template", "demo", str(tmp_path / "trivial")).stdout
    assert "kind: Deployment" in rendered and "name: demo-trivial" in rendered
    assert helm("version", "--short").stdout.startswith("v3.")
