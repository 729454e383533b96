"""Issue 13 on the real API server: the CRDs' CEL refuses what the operator refuses,
and the status proof (``tokenFingerprint``) survives the server's schema pruning."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.test_environment import variant
from tests.testenv import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.env

BASE = "https://accounts.cegedim.cloud/auth/realms/cloud"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tokenURL": f"{BASE}/../master/protocol/openid-connect/token"}, "dot segments"),
        ({"tokenURL": f"{BASE}/%2e%2e/master/token"}, "dot segments"),
        ({"tokenURL": f"{BASE}/./token"}, "dot segments"),
        ({"tokenURL": "https://accounts.cegedim.cloud@evil.example/token"}, "userinfo"),
        ({"tokenURL": f"{BASE}/token?x=1"}, "query"),
        ({"tokenURL": f"{BASE}/token#x"}, "fragment"),
        ({"tokenURL": f"{BASE}\\..\\token"}, "backslash"),
        ({"tokenURL": f"{BASE}/..;/master/token"}, "look-alikes"),
        ({"tokenURL": f"{BASE}/..%3B/master/token"}, "look-alikes"),
        ({"tokenURL": f"{BASE}/%252e%252e/master/token"}, "look-alikes"),
        ({"tokenURL": f"{BASE}/\uff0e\uff0e/master/token"}, "look-alikes"),
        ({"tokenURL": f"{BASE}/x%2f..%2fmaster/token"}, "look-alikes"),
        ({"tokenURL": f"{BASE}/protocol;x=y/token"}, "look-alikes"),
        ({"tokenURL": f"{BASE}/.../master/token"}, "look-alikes"),
        ({"targetSecret__labels": {"bad key": "x"}}, "label keys"),
        ({"targetSecret__labels": {"a/b/c": "x"}}, "label keys"),
        ({"targetSecret__labels": {"x" * 64: "x"}}, "label keys"),
        ({"targetSecret__labels": {"ok": "not valid"}}, "labels.ok"),
        ({"targetSecret__annotations": {"bad key": "x"}}, "annotation keys"),
        ({"targetSecret__annotations": {"-x": "x"}}, "annotation keys"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_crd_refuses_unsafe_urls_and_bad_keys(
    crd: None,
    custom: kubernetes.client.CustomObjectsApi,
    namespace: str,
    changes: dict[str, Any],
    message: str,
) -> None:
    body = variant("bad", **changes)
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert info.value.status == 422
    assert message in info.value.body


def test_crd_accepts_good_keys_and_keeps_the_status_proof(
    crd: None, custom: kubernetes.client.CustomObjectsApi, namespace: str
) -> None:
    body = variant(
        "good",
        targetSecret__labels={"app.kubernetes.io/part-of": "billing", "empty": ""},
        targetSecret__annotations={"example.com/note": "free text, spaces and all"},
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    proof = "sha256:" + "0" * 64
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "good", {"status": {"tokenFingerprint": proof}}
    )
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "good")
    assert stored["status"]["tokenFingerprint"] == proof  # not pruned by the schema
