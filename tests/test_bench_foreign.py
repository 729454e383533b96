"""The foreign-Secrets benchmark's pure parts: plan, shapes, ratios, report (unit tier)."""

from __future__ import annotations

import base64
import os

import pytest
from bench.foreign import (
    ETCD_REQUEST_LIMIT,
    RATIO_KEYS,
    Foreign,
    busy_fraction,
    churn_order,
    foreign_secret,
    plan,
    ratio,
    ratios,
    render,
    stored_bytes,
    verdicts,
    vm_hwm_kib,
)

OURS = {
    "itcare.cegedim.cloud/api-account": "true",
    "app.kubernetes.io/managed-by": "itcare-token-operator",
}


def test_plan_has_the_large_ones_first_and_spreads_over_the_namespaces() -> None:
    items = plan(50, 5, 4)
    assert len(items) == 50
    assert [f.kind for f in items[:5]] == ["helm"] * 5
    assert {f.kind for f in items[5:]} == {"tls", "sa"}
    assert {f.namespace for f in items} == {0, 1, 2, 3}
    assert len({(f.namespace, f.name) for f in items}) == 50  # no name clash
    with pytest.raises(ValueError):
        plan(5, 6, 1)


def test_churn_order_rewrites_every_small_one_and_a_large_one_every_fifth_write() -> None:
    items = plan(23, 3, 2)
    order = churn_order(items)
    assert [f for f in order if not f.large] == [f for f in items if not f.large]
    assert [i for i, f in enumerate(order) if f.large] == [4, 9, 14, 19]
    assert [f.index for f in order if f.large] == [0, 1, 2, 0]  # cycling
    assert churn_order(plan(3, 3, 1)) == plan(3, 3, 1)
    assert churn_order(plan(3, 0, 1)) == plan(3, 0, 1)


def test_large_secret_is_900_kib_of_incompressible_base64_under_etcds_limit() -> None:
    body = foreign_secret(Foreign(0, "helm", 0))
    size = stored_bytes(body)
    assert size == 900 * 1024
    assert size < ETCD_REQUEST_LIMIT - 64 * 1024  # room for metadata and encoding
    release = base64.b64decode(body["data"]["release"])
    base64.b64decode(release + b"=" * (-len(release) % 4))  # base64 text itself
    assert body["type"] == "helm.sh/release.v1"
    # fresh content per write: the churner's rewrites are real changes
    assert foreign_secret(Foreign(0, "helm", 0))["data"] != body["data"]


@pytest.mark.parametrize("kind", ["tls", "sa"])
def test_small_secrets_are_a_few_kib_and_none_matches_our_selectors(kind: str) -> None:
    body = foreign_secret(Foreign(7, kind, 0))
    assert 2 * 1024 <= stored_bytes(body) <= 8 * 1024
    labels = body["metadata"].get("labels", {})
    assert not any(labels.get(k) == v for k, v in OURS.items())
    if kind == "tls":
        assert body["type"] == "kubernetes.io/tls"
        assert {"tls.crt", "tls.key"} <= set(body["data"])
        assert "app.kubernetes.io/managed-by" in labels  # a look-alike: our key, not our value


def test_helm_release_labels_do_not_match_our_selectors() -> None:
    labels = foreign_secret(Foreign(1, "helm", 0))["metadata"]["labels"]
    assert labels["owner"] == "helm"
    assert not set(labels) & set(OURS)


def test_ratio_is_b_over_a_and_none_without_both() -> None:
    assert ratio(110, 100) == 1.1
    assert ratio(1, 3) == 0.333
    assert ratio(None, 1) is None
    assert ratio(1, None) is None
    assert ratio(1, 0) is None


def test_ratios_and_verdicts_against_the_target() -> None:
    a = {"cpu_ms_per_refresh": 5.0, "window_cpu_s": 10.0, "peak_rss_mib": 100.0, "restart_s": 4}
    b = {"cpu_ms_per_refresh": 5.5, "window_cpu_s": 11.5, "peak_rss_mib": 100.0}
    rs = ratios(a, b)
    assert rs["cpu_ms_per_refresh"] == 1.1
    assert rs["window_cpu_s"] == 1.15
    assert rs["peak_rss_mib"] == 1.0
    assert rs["restart_s"] is None
    assert verdicts(rs) == {
        "cpu_ms_per_refresh": True,
        "window_cpu_s": False,
        "peak_rss_mib": True,
        "restart_s": None,
    }
    assert set(verdicts(rs)) == set(RATIO_KEYS)


def test_busy_fraction() -> None:
    assert busy_fraction((10, 100), (60, 200)) == 0.5
    assert busy_fraction((10, 100), (10, 100)) == 0.0


def test_vm_hwm_of_this_process_and_of_one_that_is_gone() -> None:
    assert vm_hwm_kib(os.getpid()) > 1024
    assert vm_hwm_kib(2**22 + 12345) == 0


def _result() -> dict[str, object]:
    phase = {
        "restart_s": 4.0,
        "restart_cpu_s": 3.0,
        "window_cpu_s": 10.0,
        "cpu_ms_per_refresh": 5.0,
        "peak_rss_mib": 120.0,
        "api_requests_per_refresh": 2.0,
        "control_plane_cpu_s": 20.0,
        "refreshes": 2000,
        "token_requests": 2000,
        "machine_busy": 0.6,
        "loadavg_1m": 1.5,
    }
    with_ = {**phase, "window_cpu_s": 12.0, "cpu_ms_per_refresh": 6.0, "control_plane_cpu_s": 60}
    rs = ratios(phase, with_)
    return {
        "n": 1000,
        "token_lifetime_s": 60,
        "cycles": 3,
        "window_s": 180,
        "restarts": 3,
        "foreign": {
            "count": 5000,
            "large": 100,
            "small": 4900,
            "namespaces": 50,
            "large_kib": 900,
            "small_kib": 3.1,
            "total_mib": 103.0,
            "create_s": 60.0,
            "churn_target_per_s": 5,
            "churn_writes": 900,
            "churn_large_writes": 180,
            "churn_errors": 0,
            "churn_per_s": 5.0,
        },
        "without": phase,
        "with": with_,
        "ratios": rs,
        "target_ratio": 1.1,
        "met": verdicts(rs),
        "runtime_s": 700.0,
        "machine": "x86_64, 2 cores, Python 3.11.7",
        "date": "2026-12-05T04:00:00+00:00",
        "command": "python -m bench.foreign",
    }


def test_render_has_a_row_per_ratio_with_its_verdict_and_notes_the_shared_machine() -> None:
    md = render(_result())
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if "|" in line}
    assert rows["operator CPU per refresh (ms)"].endswith("| 5.0 | 6.0 | 1.2 | **missed** |")
    assert rows["operator peak RSS, VmHWM (MiB)"].endswith("| 120.0 | 120.0 | 1.0 | met |")
    assert rows["etcd + kube-apiserver CPU in the window (s)"].endswith("| 3.0 | - |")
    assert "2 cores and is shared" in md
    assert "make bench-foreign" in md
    assert "F = 5000 foreign Secrets in 50 other namespaces" in md


def test_render_lists_the_runs_notes_when_it_has_some() -> None:
    assert "## Notes on this run" not in render(_result())
    md = render({**_result(), "notes": ["restart A was slow"]})
    assert "## Notes on this run\n\n- restart A was slow\n" in md


def test_quiet_restarts_leave_out_those_that_met_a_refresh_wave() -> None:
    from bench.foreign import enrich, quiet_restart_s

    assert quiet_restart_s([5.0, 25.0, 2.5, 11.0, 28.0], [165, 1000, 14, 425, 1000], 1000) == 2.5
    assert quiet_restart_s([3.0, 4.0, 30.0], [10, 20, 1000], 1000) == 3.5
    assert quiet_restart_s([30.0], [1000], 1000) is None
    result = _result()
    result["without"] = {**result["without"], "restart_s_all": [3.0, 30.0]}  # type: ignore[dict-item]
    result["without"]["restart_token_requests_all"] = [10, 1000]  # type: ignore[index]
    result["with"] = {**result["with"], "restart_s_all": [3.3], "restart_token_requests_all": [0]}  # type: ignore[dict-item]
    out = enrich(result)
    assert out["ratios"]["restart_quiet_s"] == 1.1
    assert "restart with < 10 % of tokens due meanwhile (s, median)" in render(out)
