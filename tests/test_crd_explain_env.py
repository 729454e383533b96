"""``kubectl explain`` has text for every field: the OpenAPI the real API server
publishes for both kinds (what kubectl explain reads) has a description everywhere."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.test_crd_schema import fields
from tests.test_kubectl_plugin_env import cluster_crd  # noqa: F401 - fixture

pytestmark = pytest.mark.env


def published(node: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Our fields; a ``$ref`` (ObjectMeta) is the API server's own, documented type."""
    for name, child in fields(node):
        if "allOf" not in child and "$ref" not in child:
            yield name, child


@pytest.mark.parametrize("kind", ["ITCareCredential", "ClusterITCareCredential"])
def test_kubectl_explain_has_text_for_every_field(
    kind: str,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    crd: None,
    cluster_crd: None,  # noqa: F811
) -> None:
    doc = json.loads(
        kubectl("get", "--raw", "/openapi/v3/apis/itcare.cegedim.cloud/v1alpha1").stdout
    )
    schema = doc["components"]["schemas"][f"cloud.cegedim.itcare.v1alpha1.{kind}"]
    walked = list(published(schema))
    assert len(walked) > 30 and any(n == "status.conditions[].reason" for n, _ in walked)
    blank = [n for n, node in walked if not (node.get("description") or "").strip()]
    assert not blank, f"kubectl explain {kind} is blank for {blank}"
