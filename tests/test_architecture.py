"""The layering docs/design.md promises, checked on the source (so a refactor that
breaks it fails here, not in review)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "operator" / "itcare_operator"
# The domain: what a credential is and what to do about it. Pure, testable with a
# fake clock, importing no framework, client or HTTP library.
DOMAIN = {
    "errors",
    "model",
    "refresh_policy",
    "selector",
    "settings",
    "source_secret",
    "spec",
    "status",
    "target_secret",
    "token",
    "token_url",
}
FRAMEWORKS = {"kopf", "kubernetes", "httpx", "urllib3", "prometheus_client", "asyncio"}
# The service layer (the reconcile core) talks to Kubernetes only through KubeClient
# and to kopf not at all: kopf stays at the edges (handlers, runner).
CORE = {"registry", "reconciler", "delivery", "namespaced", "fanout", "cleanup", "secret_write"}


def imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def ours(names: set[str]) -> set[str]:
    return {n.split(".", 1)[1] for n in names if n.startswith("itcare_operator.")}


@pytest.mark.parametrize("module", sorted(DOMAIN))
def test_the_domain_imports_no_framework_and_only_the_domain(module: str) -> None:
    found = imports(module)
    assert not {n.split(".")[0] for n in found} & FRAMEWORKS, found
    assert ours(found) <= DOMAIN | {"_version"}, ours(found) - DOMAIN


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_does_not_import_kopf_or_the_kubernetes_client(module: str) -> None:
    roots = {n.split(".")[0] for n in imports(module)}
    assert not roots & {"kopf", "kubernetes", "httpx"}, roots
    assert not ours(imports(module)) & {"handlers", "runner", "cli"}


@pytest.mark.parametrize("module", sorted(DOMAIN | CORE))
def test_time_decisions_use_the_injected_clock(module: str) -> None:
    """``time.time()`` or ``datetime.now()`` beside an injected clock would put two
    clocks in one scheduler heap (a fake clock in tests, skew in production)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    calls = {
        ast.unparse(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & {"time.time", "dt.datetime.now", "datetime.now", "datetime.datetime.now"}
