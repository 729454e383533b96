"""The CRDs as users read them: ``kubectl explain`` text for every field, and a
reference page that prints YAML values, not Python ones (unit tier, no cluster)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml")) + sorted(
    (ROOT / "charts" / "itcare-token-operator" / "files").glob("*.yaml")
)
sys.path.insert(0, str(ROOT / "scripts"))
import crd_docs  # noqa: E402


def fields(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property at every depth: nested objects, array items, map values."""
    for name, child in (schema.get("properties") or {}).items():
        field = f"{path}.{name}" if path else name
        yield field, child
        yield from fields(child, field)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from fields(items, f"{path}[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from fields(extra, f"{path}{{}}")


def openapi(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_walk_reaches_every_depth() -> None:
    schema = {
        "properties": {
            "a": {"type": "array", "items": {"properties": {"b": {"type": "string"}}}},
            "m": {"additionalProperties": {"properties": {"c": {"type": "string"}}}},
        }
    }
    assert [name for name, _ in fields(schema)] == ["a", "a[].b", "m", "m{}.c"]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_crd_field_has_a_description(path: Path) -> None:
    """Except the top-level ``metadata``: the API server refuses anything there but its
    type, and ``kubectl explain`` shows ObjectMeta's own documentation for it."""
    walked = list(fields(openapi(path)))
    assert len(walked) > 30  # spec and status, nested
    assert {"status.conditions[].reason", "status.lastRefreshTime"} <= {n for n, _ in walked}
    blank = [
        name
        for name, node in walked
        if name != "metadata" and not (node.get("description") or "").strip()
    ]
    assert not blank, f"fields without a description (kubectl explain is blank): {blank}"


def test_crd_reference_prints_yaml_literals_not_python_ones() -> None:
    schema = {
        "properties": {
            "suspend": {"type": "boolean", "default": False},
            "count": {"type": "integer", "default": 0},
            "keys": {"type": "object", "default": {}},
            "when": {"type": "string", "default": None},
        }
    }
    rows: list[str] = []
    crd_docs.walk(schema, "", set(), rows)
    text = "\n".join(rows)
    assert "default `false`" in text and "default `0`" in text
    assert "default `{}`" in text and "default `null`" in text


def test_crd_reference_has_no_python_literals_and_lists_item_fields() -> None:
    text = (ROOT / "docs" / "crd-reference.md").read_text()
    for literal in ("`False`", "`True`", "`None`", "{'", "['"):
        assert literal not in text.replace('`"True"`', "").replace('`"False"`', ""), literal
    assert "`status.conditions[].reason`" in text
    assert "`spec.suspend` | boolean |  | true keeps" in text and "default `false`" in text


def test_crd_reference_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "crd_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout
