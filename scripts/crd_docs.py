"""Generate docs/crd-reference.md from the CRDs' OpenAPI schemas.

python scripts/crd_docs.py          # rewrite
python scripts/crd_docs.py --check  # exit 1 when out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRDS = [
    ROOT / "crds" / "itcarecredentials.itcare.cegedim.cloud.yaml",
    ROOT / "crds" / "clusteritcarecredentials.itcare.cegedim.cloud.yaml",
]
OUT = ROOT / "docs" / "crd-reference.md"


def literal(value: Any) -> str:
    """A value as it is written in a manifest: ``false``, ``null``, ``{}``, a string bare
    (``client-id``) unless YAML would read it as something else (``"True"``)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value, separators=(", ", ": "))


def walk(node: dict[str, Any], path: str, required: set[str], rows: list[str]) -> None:
    for name, child in (node.get("properties") or {}).items():
        field = f"{path}.{name}" if path else name
        kind = child.get("type", "")
        if kind == "array":
            kind = f"array of {child.get('items', {}).get('type', 'object')}"
        notes = []
        if "default" in child:
            notes.append(f"default `{literal(child['default'])}`")
        if "enum" in child:
            notes.append("one of " + ", ".join(f"`{literal(v)}`" for v in child["enum"]))
        if "minimum" in child or "maximum" in child:
            notes.append(f"{child.get('minimum', '')}..{child.get('maximum', '')}")
        if "pattern" in child:
            notes.append(f"pattern `{child['pattern']}`")
        for rule in child.get("x-kubernetes-validations") or []:
            notes.append(f"rule: {rule['message']}")
        desc = " ".join((child.get("description") or "").split())
        req = "yes" if name in required else ""
        extra = f" ({'; '.join(notes)})" if notes else ""
        rows.append(f"| `{field}` | {kind} | {req} | {desc}{extra} |")
        if child.get("properties"):
            walk(child, field, set(child.get("required") or []), rows)
        items = child.get("items") or {}
        if items.get("properties"):
            walk(items, f"{field}[]", set(items.get("required") or []), rows)


def render() -> str:
    return "\n".join(render_one(path, level="#" if i == 0 else "##") for i, path in enumerate(CRDS))


def render_one(path: Path, level: str) -> str:
    crd = yaml.safe_load(path.read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    names = crd["spec"]["names"]
    rows: list[str] = []
    spec = schema["properties"]["spec"]
    walk({"properties": {"spec": spec}}, "", {"spec"}, rows)
    walk({"properties": {"status": schema["properties"]["status"]}}, "", set(), rows)
    columns = "\n".join(
        f"| {c['name']} | `{c['jsonPath']}` | {c.get('priority', 0)} |"
        for c in version["additionalPrinterColumns"]
    )
    rules = "; ".join(r["message"] for r in spec.get("x-kubernetes-validations", []))
    shorts, categories = ", ".join(names["shortNames"]), ", ".join(names["categories"])
    scope = "namespaced" if crd["spec"]["scope"] == "Namespaced" else "cluster-scoped"
    return f"""{level} {names["kind"]} reference

Generated from `crds/{path.name}` by `scripts/crd_docs.py`.

`{crd["spec"]["group"]}/{version["name"]}`, kind `{names["kind"]}`, plural `{names["plural"]}`,
short name `{shorts}`, category `{categories}`, {scope},
status subresource. Spec-level rules: {rules}.

{" ".join(schema["description"].split())}

| Field | Type | Required | Description |
| --- | --- | --- | --- |
{chr(10).join(rows)}

{level}# Printer columns

| Column | JSONPath | Priority (1: `-o wide`) |
| --- | --- | --- |
{columns}
"""


def main() -> int:
    content = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != content:
            print("docs/crd-reference.md is out of date: run scripts/crd_docs.py")
            return 1
        return 0
    OUT.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
