"""The scale benchmark's own timing rules (unit tier)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.run import CRD_CREATE_DELAY_S, create_delay_ends, parse_time, save_rows


def crd(established: str | None, status: str = "True") -> dict[str, Any]:
    conditions = [
        {"type": "NamesAccepted", "status": "True", "lastTransitionTime": "2026-11-29T01:00:00Z"}
    ]
    if established:
        conditions.append(
            {"type": "Established", "status": status, "lastTransitionTime": established}
        )
    return {"metadata": {"name": "x"}, "status": {"conditions": conditions}}


def test_creates_are_timed_only_after_the_api_servers_hold_on_a_new_kind() -> None:
    at = parse_time("2026-11-29T01:00:10Z")
    # the transition happened somewhere in [10 s, 11 s): the hold ends by 11 s + 2 s
    assert create_delay_ends([crd("2026-11-29T01:00:10Z")]) == at + 1 + CRD_CREATE_DELAY_S


def test_the_latest_established_crd_decides() -> None:
    crds = [crd("2026-11-29T01:00:10Z"), crd("2026-11-29T01:00:40Z"), crd("2026-11-29T01:00:20Z")]
    assert create_delay_ends(crds) == parse_time("2026-11-29T01:00:43Z")


def test_crds_not_established_hold_nothing() -> None:
    assert create_delay_ends([crd(None), crd("2026-11-29T01:00:10Z", status="False")]) == 0.0
    assert create_delay_ends([{"metadata": {"name": "new"}}]) == 0.0


def test_save_rows_replaces_or_merges_by_key_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    save_rows(path, [{"n": 1000, "a": 1, "b": 2}, {"n": 100, "a": 0}])
    assert save_rows(path, [{"n": 1000, "a": 3}]) == [{"n": 100, "a": 0}, {"n": 1000, "a": 3}]
    merged = save_rows(path, [{"n": 1000, "b": 4}], merge=True)
    assert merged == [{"n": 100, "a": 0}, {"n": 1000, "a": 3, "b": 4}]
    assert json.loads(path.read_text()) == merged
    other = tmp_path / "cluster.json"
    assert save_rows(other, [{"namespaces": 10}, {"namespaces": 1}], key="namespaces") == [
        {"namespaces": 1},
        {"namespaces": 10},
    ]
