"""docs/troubleshooting.md covers every reason and event the code can produce."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from itcare_operator.errors import Reason
from itcare_operator.troubleshooting import EVENTS, OPERATOR_FAILURES, REASONS, entry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "operator" / "itcare_operator"
DOC = ROOT / "docs" / "troubleshooting.md"


def doc_headings() -> set[str]:
    return {m.strip("`") for m in re.findall(r"^### (.+)$", DOC.read_text(), re.M)}


def event_reasons_in_code() -> set[str]:
    """The literal reasons of every ``_event(...)``/``create_event(...)`` call; calls
    with a computed reason pass a Refreshed reason (a :class:`Reason`)."""
    found: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in ("_event", "create_event"):
                continue
            for arg in node.args:
                value = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(value, str) and re.fullmatch(r"[A-Z][A-Za-z]+", value):
                    found.add(value)
    return found - {"Normal", "Warning"}  # the event types


def test_the_code_walk_finds_the_event_reasons() -> None:
    assert {"TokenIssued", "RefreshRecovered", "TokenExpired"} <= event_reasons_in_code()


def test_every_reason_in_errors_py_has_a_heading() -> None:
    missing = {str(r) for r in Reason} - doc_headings()
    assert not missing, f"docs/troubleshooting.md lacks: {sorted(missing)}"


def test_every_event_reason_in_the_code_has_a_heading() -> None:
    missing = event_reasons_in_code() - doc_headings()
    assert not missing, f"docs/troubleshooting.md lacks events: {sorted(missing)}"


def test_every_reason_has_an_entry_for_the_plugin() -> None:
    assert all(entry(str(r)) is not None for r in Reason)
    assert all(entry(e) is not None for e in event_reasons_in_code())
    assert entry("NoSuchReason") is None


def test_operator_level_failures_are_in_the_doc() -> None:
    headings = doc_headings()
    assert len(OPERATOR_FAILURES) >= 5
    assert {e.name for e in OPERATOR_FAILURES} <= headings
    assert set(REASONS) | set(EVENTS) <= headings


def test_operator_level_failures_match_the_code() -> None:
    """Each operator-level heading is text the operator prints, so a user can search it."""
    code = " ".join(p.read_text() for p in PACKAGE.glob("*.py") if p.name != "troubleshooting.py")
    api_answers = {"403 Forbidden"}  # the API server's text inside our log lines
    absent = [
        e.name
        for e in OPERATOR_FAILURES
        if e.name not in api_answers and e.name.replace("NS/NAME", "%s") not in code
    ]
    assert not absent, absent


def test_troubleshooting_doc_is_generated() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "troubleshooting_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout
