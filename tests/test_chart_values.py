"""The chart's values as a platform team sets them, rendered by the real helm (fast tier:
no cluster): as a subchart of an umbrella chart, with ``global`` values, spread
constraints, annotations, a proxy, strategy and probe overrides; defaults unchanged."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from itcare_operator.cli_args import build_parser
from itcare_operator.troubleshooting import ALERTS
from tests.environment import component_paths

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "itcare-token-operator"
Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = component_paths()["helm"]
    if not binary.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"helm is not built ({binary}): scripts/build-components helm")
        pytest.skip(f"helm is not built ({binary}): scripts/build-components helm")
    home = tmp_path_factory.mktemp("helm-home")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            env={
                **os.environ,
                "HELM_CACHE_HOME": str(home / "cache"),
                "HELM_CONFIG_HOME": str(home / "config"),
                "HELM_DATA_HOME": str(home / "data"),
            },
        )

    return run


def render(helm: Helm, chart: Path, *args: str) -> list[dict[str, Any]]:
    out = helm("template", "itop", str(chart), "--namespace", "itcare-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == "Deployment"]
    return found


def test_defaults_keep_the_strategy_and_probes(helm: Helm) -> None:
    dep = deployment(render(helm, CHART))
    spec = dep["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["startupProbe"] == {
        "httpGet": {"path": "/healthz", "port": "health"},
        "periodSeconds": 2,
        "failureThreshold": 60,
    }
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "health"},
        "periodSeconds": 20,
        "failureThreshold": 3,
    }
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "health"},
        "periodSeconds": 10,
    }
    assert "priorityClassName" not in pod and "topologySpreadConstraints" not in pod
    assert "annotations" not in dep["metadata"]
    assert [e["name"] for e in container["env"]] == ["POD_NAMESPACE"]


def test_platform_values(helm: Helm, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "commonLabels": {"team": "platform"},
                "deploymentAnnotations": {"owner": "platform"},
                "podAnnotations": {"scrape": "yes"},
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway",
                    }
                ],
                "proxy": {"httpsProxy": "http://proxy.example:3128", "noProxy": "10.0.0.0/8"},
                "strategy": {"type": "Recreate"},
                "health": {"probes": {"liveness": {"periodSeconds": 30, "timeoutSeconds": 5}}},
                "operator": {"logLevel": "debug"},
            }
        )
    )
    docs = render(helm, CHART, "-f", str(values))
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["kind"]
    dep = deployment(docs)
    assert dep["metadata"]["annotations"] == {"owner": "platform"}
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"scrape": "yes"}
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://proxy.example:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "10.0.0.0/8"
    assert container["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "health"},
        "periodSeconds": 30,
        "failureThreshold": 3,
        "timeoutSeconds": 5,
    }
    assert "--log-level=debug" in container["args"]


@pytest.mark.parametrize(
    "bad",
    [
        "topologySpreadConstraints: [{maxSkew: 1}]",
        "proxy: {http: x}",
        "strategy: {type: Sideways}",
        "health: {probes: {startupish: {}}}",
        "operator: {logLevel: TRACE}",
    ],
)
def test_schema_still_refuses_typos(helm: Helm, tmp_path: Path, bad: str) -> None:
    values = tmp_path / "bad.yaml"
    values.write_text(bad + "\n")
    proc = helm("template", "itop", str(CHART), "-f", str(values), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications" in proc.stderr


def test_log_level_accepts_what_the_cli_accepts() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["operator"]["properties"]["logLevel"]["enum"]
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    (action,) = [a for a in run._actions if "--log-level" in a.option_strings]
    assert sorted(allowed) == sorted(action.choices or [])


def test_umbrella_chart_with_globals(helm: Helm, tmp_path: Path) -> None:
    """As a subchart: an umbrella chart's ``global`` values (ours and others') render."""
    umbrella = tmp_path / "platform"
    umbrella.mkdir()
    (umbrella / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [
                    {
                        "name": "itcare-token-operator",
                        "version": yaml.safe_load((CHART / "Chart.yaml").read_text())["version"],
                        "repository": f"file://{CHART}",
                    }
                ],
            }
        )
    )
    (umbrella / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "priorityClassName": "platform-critical",
                    "commonLabels": {"platform": "core"},
                    "imageRegistry": "mirror.example",  # another subchart's global
                },
                "itcare-token-operator": {"replicaCount": 2},
            }
        )
    )
    helm("dependency", "update", "--skip-refresh", str(umbrella))
    docs = render(helm, umbrella)
    dep = deployment(docs)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["priorityClassName"] == "platform-critical"
    assert dep["metadata"]["labels"]["platform"] == "core"
    # The subchart's own value wins over the global one.
    docs = render(helm, umbrella, "--set", "itcare-token-operator.priorityClassName=own")
    assert deployment(docs)["spec"]["template"]["spec"]["priorityClassName"] == "own"


def test_every_alert_links_its_versioned_runbook(helm: Helm) -> None:
    docs = render(helm, CHART, "--set", "prometheusRule.enabled=true,prometheusRule.force=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    base = (
        "https://github.com/itcare-token-operator/itcare-token-operator"
        f"/blob/v{version}/docs/troubleshooting.md"
    )
    assert {a["alert"] for a in alerts} == {e.name for e in ALERTS}
    for alert in alerts:
        name = alert["alert"]
        assert alert["annotations"]["runbook_url"] == f"{base}#{name.lower()}"
        assert f"\n### `{name}`\n" in doc
    docs = render(
        helm,
        CHART,
        "--set",
        "prometheusRule.enabled=true,prometheusRule.force=true",
        "--set",
        "prometheusRule.runbookBaseURL=https://wiki.example/itcare",
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    urls = {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "https://wiki.example/itcare#itcaretokenexpiringsoon" in urls
