"""The Helm chart: lint, render, validate on the real API server, audit RBAC, and run
the operator with exactly the chart's ServiceAccount permissions."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.environment import Environment, kubeconfig
from tests.proxy import KeycloakProxy
from tests.testenv import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    condition,
    get_credential,
    make_credential,
    make_source_secret,
    secret_data,
    wait_for,
)

pytestmark = pytest.mark.env

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "itcare-token-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
Helm = Callable[..., subprocess.CompletedProcess[str]]

# Every (apiGroup, resource, verb) the operator uses; the audit fails on anything else.
OPERATOR_USES = {
    ("itcare.cegedim.cloud", "itcarecredentials", "list"),
    ("itcare.cegedim.cloud", "itcarecredentials", "watch"),
    ("itcare.cegedim.cloud", "itcarecredentials/status", "patch"),
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "create"),
    ("", "secrets", "update"),
    ("", "events", "create"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
}
# ... and with clusterCredentials.enabled, these too.
CLUSTER_CREDENTIALS_USE = {
    ("itcare.cegedim.cloud", "clusteritcarecredentials", "list"),
    ("itcare.cegedim.cloud", "clusteritcarecredentials", "watch"),
    ("itcare.cegedim.cloud", "clusteritcarecredentials", "patch"),
    ("itcare.cegedim.cloud", "clusteritcarecredentials/status", "patch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("", "secrets", "delete"),
}
CLUSTER_PLURAL = "clusteritcarecredentials"


def render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    out = helm("template", "itop", str(CHART), "--namespace", "itcare-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def is_aggregated(role: dict[str, Any]) -> bool:
    """A ClusterRole for the cluster's users (aggregated into view/edit/admin)."""
    labels = role["metadata"].get("labels") or {}
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels)


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("plural", [PLURAL, "clusteritcarecredentials"])
def test_chart_crd_is_the_top_level_crd(plural: str) -> None:
    top = (ROOT / "crds" / f"{plural}.{GROUP}.yaml").read_text()
    copy = (CHART / "files" / f"{plural}.{GROUP}.yaml").read_text()
    assert copy == top, "run: cp crds/*.yaml charts/itcare-token-operator/files/"


def test_chart_readme_is_generated_from_values() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict(helm: Helm, values: Path) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize(
    "bad",
    [
        "replicaCount: two",
        "operator: {watchNamespace: [a]}",
        "operator: {logFormat: xml}",
        "metrics: {port: 70000}",
        "unknownTopLevel: 1",
        "operator: {allowedTokenURLs: [ftp://x]}",
        "image: {digest: latest}",
        "tokenEndpointCA: {pem: not-a-certificate}",
        "operator: {volumeDeliverySeconds: 0}",
        "operator: {allowedTokenURLs: ['https://accounts.cegedim.cloud@evil.example/']}",
        "operator: {allowedTokenURLs: ['https://accounts.cegedim.cloud/realms?x=1']}",
        "rbac: {aggregateClusterRole: true}",
    ],
)
def test_bad_values_are_rejected(helm: Helm, tmp_path: Path, bad: str) -> None:
    (tmp_path / "bad.yaml").write_text(bad)
    proc = helm("template", "x", str(CHART), "-f", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode != 0 and "schema" in proc.stderr


def test_default_render(helm: Helm) -> None:
    docs = render(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",  # aggregated to view
            "ClusterRole",  # aggregated to edit
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
        ]
    )
    crd = of_kind(docs, "CustomResourceDefinition")[0]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    top = yaml.safe_load(
        (ROOT / "crds" / "itcarecredentials.itcare.cegedim.cloud.yaml").read_text()
    )
    assert crd["spec"] == top["spec"]
    (deploy,) = of_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["args"][0] == "run" and "--standalone" not in container["args"]
    assert (
        "--allowed-token-url=https://accounts.cegedim.cloud/auth/realms/cloud/" in container["args"]
    )
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]
    assert not any("--namespace" in a for a in container["args"])


def test_namespaced_render_has_nothing_cluster_wide_but_the_crd(helm: Helm) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert not of_kind(docs, "ClusterRoleBinding")
    # The only ClusterRoles are the users' aggregated ones, bound to nobody by the chart.
    assert all(is_aggregated(r) for r in of_kind(docs, "ClusterRole"))
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(docs, "Role")}
    assert {
        ("team-a", "itop-itcare-token-operator"),
        ("team-b", "itop-itcare-token-operator"),
        ("itcare-system", "itop-itcare-token-operator-leader-election"),
    } == roles
    (deploy,) = of_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_monitoring_render(helm: Helm) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "monitoring-values.yaml"))
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # Our namespace label (the credential's) must survive the scrape.
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    (rule,) = of_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {
        "ITCareTokenExpiringSoon",
        "ITCareTokenRefreshFailing",
        "ITCareCredentialNotReady",
        "ITCareTokenOperatorAbsent",
    }
    assert "itcare_token_lifetime_seconds * 0.2)" in alerts["ITCareTokenExpiringSoon"]["expr"]
    assert of_kind(docs, "PodDisruptionBudget")
    # Without force and without the API, neither renders.
    plain = render(helm, "--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true")
    assert not of_kind(plain, "ServiceMonitor") and not of_kind(plain, "PrometheusRule")


def test_pdb_follows_the_replica_count(helm: Helm) -> None:
    """Rendered by default only with more than one replica; an explicit value wins."""
    assert not of_kind(render(helm), "PodDisruptionBudget")
    (pdb,) = of_kind(render(helm, "--set", "replicaCount=2"), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    off = render(helm, "--set", "replicaCount=2", "--set", "podDisruptionBudget.enabled=false")
    assert not of_kind(off, "PodDisruptionBudget")
    (deploy,) = of_kind(render(helm, "--set", "replicaCount=2"), "Deployment")
    # The new pod of a rollout waits as standby until the old one releases the Lease.
    assert deploy["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_token_endpoint_ca_is_mounted_and_passed(helm: Helm, tmp_path: Path) -> None:
    pem = tmp_path / "ca.crt"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    docs = render(helm, "--set-file", f"tokenEndpointCA.pem={pem}")
    (config_map,) = of_kind(docs, "ConfigMap")
    assert config_map["data"]["ca.crt"].strip() == pem.read_text().strip()
    (deploy,) = of_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--ca-bundle=/etc/itcare-token-operator/ca/ca.crt" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "token-endpoint-ca")
    assert mount["mountPath"] == "/etc/itcare-token-operator/ca" and mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == "token-endpoint-ca")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # A changed bundle rolls the pods.
    assert "checksum/ca-bundle" in deploy["spec"]["template"]["metadata"]["annotations"]
    # An existing ConfigMap instead: mounted, none rendered.
    docs = render(helm, "--set", "tokenEndpointCA.configMap=corp-ca,tokenEndpointCA.key=b.pem")
    assert not of_kind(docs, "ConfigMap")
    (deploy,) = of_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert "--ca-bundle=/etc/itcare-token-operator/ca/b.pem" in pod["containers"][0]["args"]
    assert {"name": "token-endpoint-ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]


def test_image_digest_and_extra_volumes(helm: Helm) -> None:
    digest = "sha256:" + "a" * 64
    docs = render(
        helm,
        "--set",
        f"image.digest={digest}",
        "--set-json",
        'extraVolumes=[{"name":"x","emptyDir":{}}]',
        "--set-json",
        'extraVolumeMounts=[{"name":"x","mountPath":"/x"}]',
        "--set",
        "operator.volumeDeliverySeconds=25",
    )
    (deploy,) = of_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"ghcr.io/itcare-token-operator/itcare-token-operator@{digest}"
    assert {"name": "x", "emptyDir": {}} in pod["volumes"]
    assert {"name": "x", "mountPath": "/x"} in container["volumeMounts"]
    assert "--volume-delivery-seconds=25" in container["args"]


def test_grafana_dashboard_render(helm: Helm) -> None:
    """Opt-in; the sidecar label is configurable; the JSON is the chart's file, intact."""
    assert not of_kind(render(helm), "ConfigMap")
    docs = render(helm, "-f", str(CHART / "ci" / "monitoring-values.yaml"))
    (config_map,) = of_kind(docs, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "itcare-system"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["team"] == "platform"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ITCare"}
    dashboard = json.loads(config_map["data"]["itcare-token-operator.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    moved = render(
        helm,
        "--set",
        "grafanaDashboard.enabled=true,grafanaDashboard.namespace=monitoring",
        "--set-json",
        'grafanaDashboard.labels={"dashboards":"itcare","grafana_dashboard":null}',
    )
    (config_map,) = of_kind(moved, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["dashboards"] == "itcare"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]


def test_networkpolicy_render(helm: Helm) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "networkpolicy-values.yaml"))
    (policy,) = of_kind(docs, "NetworkPolicy")
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 6443, 443}
    cidrs = [b["ipBlock"]["cidr"] for rule in policy["spec"]["egress"] for b in rule.get("to", [])]
    assert cidrs == ["10.0.0.1/32", "185.0.0.0/16"]
    # Every egress rule but DNS names its destinations; metrics only from Prometheus.
    assert all(rule.get("to") for rule in policy["spec"]["egress"][1:])
    metrics = policy["spec"]["ingress"][0]
    assert metrics["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ({"apiServerCIDRs": [], "tokenEndpointCIDRs": ["1.2.3.0/24"]}, "apiServerCIDRs"),
        ({"apiServerCIDRs": ["10.0.0.1/32"], "tokenEndpointCIDRs": []}, "tokenEndpointCIDRs"),
        ({"apiServerCIDRs": ["10.0.0.1/32"], "tokenEndpointCIDRs": ["1.2.3.0/24"]}, "metricsFrom"),
    ],
)
def test_networkpolicy_refuses_to_allow_anything(
    helm: Helm, values: dict[str, Any], refused: str
) -> None:
    """Shared-cluster item 8: empty apiServerCIDRs meant egress to any address on
    443/6443, the token rule allowed 0.0.0.0/0 by default, and any pod could read the
    metrics (every credential's name and failures)."""
    proc = helm(
        "template",
        "itop",
        str(CHART),
        "--set-json",
        f"networkPolicy={json.dumps({'enabled': True, **values})}",
        check=False,
    )
    assert proc.returncode != 0 and refused in proc.stderr, proc.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_objects_pass_the_api_servers_validation(
    helm: Helm, kubectl: Callable[..., subprocess.CompletedProcess[str]], crd: None, values: Path
) -> None:
    """Server-side dry run: the real API server checks every object against its schemas."""
    docs = [
        d
        for d in render(helm, "-f", str(values))
        if not d["apiVersion"].startswith("monitoring.coreos.com/")
    ]
    kubectl("create", "namespace", "itcare-system", check=False)
    for ns in ("team-a", "team-b"):
        kubectl("create", "namespace", ns, check=False)
    proc = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=yaml.safe_dump_all(docs),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rbac_audit(helm: Helm, values: Path) -> None:
    docs = render(helm, "-f", str(values))
    granted: set[tuple[str, str, str]] = set()
    operator_roles = [r for r in of_kind(docs, "ClusterRole") if not is_aggregated(r)]
    for role in operator_roles + of_kind(docs, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), (
                            f"wildcard in {role['metadata']['name']}"
                        )
                        granted.add((group, resource, verb))
    uses = OPERATOR_USES
    if yaml.safe_load(values.read_text()).get("clusterCredentials", {}).get("enabled"):
        uses = OPERATOR_USES | CLUSTER_CREDENTIALS_USE
    assert granted == uses, f"extra: {granted - uses}, missing: {uses - granted}"


@pytest.mark.parametrize("cluster_kind", [False, True])
def test_aggregated_user_roles(helm: Helm, cluster_kind: bool) -> None:
    """view reads the kinds, edit/admin also write ITCareCredentials; none writes a
    status (the operator's proof of the token it wrote), none touches Secrets, and
    none allows creating a ClusterITCareCredential."""
    args = ["--set", "clusterCredentials.enabled=true"] if cluster_kind else []
    docs = render(helm, *args)
    roles = {r["metadata"]["name"]: r for r in of_kind(docs, "ClusterRole") if is_aggregated(r)}
    view, edit = roles["itop-itcare-token-operator-view"], roles["itop-itcare-token-operator-edit"]
    view_labels, edit_labels = view["metadata"]["labels"], edit["metadata"]["labels"]
    assert view_labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit_labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit_labels
    read = {"get", "list", "watch"}
    kinds = [PLURAL, CLUSTER_PLURAL] if cluster_kind else [PLURAL]
    assert grants(view) == {
        (GROUP, resource, verb)
        for kind in kinds
        for resource in (kind, f"{kind}/status")
        for verb in read
    }
    assert grants(edit) == {
        (GROUP, PLURAL, verb)
        for verb in ("create", "update", "patch", "delete", "deletecollection")
    }
    # Off: none rendered.
    off = render(helm, "--set", "rbac.aggregateClusterRoles=false", *args)
    assert not [r for r in of_kind(off, "ClusterRole") if is_aggregated(r)]


def test_cluster_credentials_render(helm: Helm) -> None:
    docs = render(helm, "-f", str(CHART / "ci" / "cluster-credentials-values.yaml"))
    crds = {d["metadata"]["name"] for d in of_kind(docs, "CustomResourceDefinition")}
    assert crds == {f"{PLURAL}.{GROUP}", f"{CLUSTER_PLURAL}.{GROUP}"}
    (crd,) = [
        d
        for d in of_kind(docs, "CustomResourceDefinition")
        if "cluster" in d["spec"]["names"]["plural"]
    ]
    top = yaml.safe_load((ROOT / "crds" / f"{CLUSTER_PLURAL}.{GROUP}.yaml").read_text())
    assert crd["spec"] == top["spec"]
    (deploy,) = of_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cluster-credentials" in args
    assert "--allowed-source-namespace=platform-accounts" in args
    # Off by default: no CRD, no flag, no extra permission.
    plain = render(helm)
    assert len(of_kind(plain, "CustomResourceDefinition")) == 1
    (deploy,) = of_kind(plain, "Deployment")
    assert (
        "--cluster-credentials" not in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_cluster_credentials_refuse_namespaced_mode(helm: Helm) -> None:
    proc = helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "clusterCredentials.enabled=true",
        "--set",
        "operator.watchNamespaces[0]=team-a",
        check=False,
    )
    assert proc.returncode != 0 and "needs cluster-wide mode" in proc.stderr


# -- installed, and the operator running as the chart's ServiceAccount -----------------------


def adopt_crd(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], release: str, ns: str
) -> None:
    """The session's CRDs were applied by kubectl or an earlier release; let this
    release adopt them (helm's rule)."""
    for plural in (PLURAL, CLUSTER_PLURAL):
        name = f"crd/{plural}.{GROUP}"
        if kubectl("get", name, check=False).returncode != 0:
            continue
        kubectl("label", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        kubectl(
            "annotate",
            name,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={ns}",
            "--overwrite",
        )


def sa_kubeconfig(
    testenv: Environment, core: kubernetes.client.CoreV1Api, ns: str, sa: str, path: Path
) -> Path:
    token = core.create_namespaced_service_account_token(
        sa, ns, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    path.write_text(
        yaml.safe_dump(
            kubeconfig(testenv.api_url, testenv.directory / "pki" / "ca.crt", token=token, user=sa)
        )
    )
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_installed_chart_rbac_is_sufficient(
    mode: str,
    testenv: Environment,
    helm: Helm,
    crd: None,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kc: KeycloakProxy,
    realm: dict[str, Any],
    run_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    suffix = secrets.token_hex(3)
    release, system_ns, team_ns = f"itop-{suffix}", f"itcare-system-{suffix}", f"team-{suffix}"
    core.create_namespace({"metadata": {"name": team_ns}})
    args = [
        "install",
        release,
        str(CHART),
        "--namespace",
        system_ns,
        "--create-namespace",
        "--set",
        f"operator.allowedTokenURLs[0]={kc.base_url}/auth/realms/cloud/",
    ]
    if mode == "namespaced":
        args += ["--set", f"operator.watchNamespaces[0]={team_ns}", "--set", "crds.enabled=false"]
    else:
        adopt_crd(kubectl, release, system_ns)
    try:
        helm(*args)
        sa = f"{release}-itcare-token-operator"
        config = sa_kubeconfig(testenv, core, system_ns, sa, tmp_path / "sa.kubeconfig")
        # Exactly the chart's arguments, minus the ports, which the test chooses.
        deploy = kubernetes.client.AppsV1Api(core.api_client).read_namespaced_deployment(
            sa, system_ns
        )
        chart_args = [
            a
            for a in deploy.spec.template.spec.containers[0].args[1:]
            if not a.startswith(("--metrics-port", "--health-port", "--log-"))
        ]
        op = run_operator(*chart_args, kubeconfig=config, extra_env={"POD_NAMESPACE": system_ns})
        # The Lease proves the leader-election Role works.
        lease = kubernetes.client.CoordinationV1Api(core.api_client).read_namespaced_lease(
            "itcare-token-operator", system_ns
        )
        assert lease.spec.holder_identity
        make_source_secret(core, team_ns, realm["clients"]["itcare-test"])
        make_credential(custom, team_ns, kc.token_url)
        first = wait_for(
            "issuance as the chart's ServiceAccount",
            lambda: secret_data(core, team_ns, "itcare-token"),
            timeout=30,
        )
        refreshed = wait_for(
            "refresh",
            lambda: (
                (d := secret_data(core, team_ns, "itcare-token"))
                and d["access_token"] != first["access_token"]
                and d
            ),
            timeout=30,
        )
        second = realm["clients"]["itcare-second"]
        core.patch_namespaced_secret(
            "itcare-api-account",
            team_ns,
            {
                "data": {
                    "client-id": base64.b64encode(second["client_id"].encode()).decode(),
                    "client-secret": base64.b64encode(second["client_secret"].encode()).decode(),
                }
            },
        )
        wait_for("rotation", lambda: kc.count(second["client_id"]) >= 1, timeout=15)
        wait_for(
            "new token after rotation",
            lambda: (
                (d := secret_data(core, team_ns, "itcare-token"))
                and d["access_token"] != refreshed["access_token"]
            ),
            timeout=15,
        )
        cr = get_credential(custom, team_ns)
        assert condition(cr, "Ready")["status"] == "True"
        assert [e for e in core.list_namespaced_event(team_ns).items if e.reason == "TokenIssued"]
        custom.delete_namespaced_custom_object(GROUP, VERSION, team_ns, PLURAL, "billing")
        wait_for("deletion", lambda: secret_data(core, team_ns, "itcare-token") is None, timeout=60)
        messages = [
            json.loads(line)["message"] for line in op.output().splitlines() if line.strip()
        ]
        denied = [m for m in messages if re.search(r"Forbidden|(?:^|[\s:(])403(?:[\s)]|$)", m)]
        assert not denied, denied  # (not the raw text: timestamps like 58.403 contain "403")
    finally:
        helm("uninstall", release, "--namespace", system_ns, check=False)
        core.delete_namespace(team_ns)
    # crds.keep: the CRD survives the uninstall.
    assert kubectl("get", f"crd/{PLURAL}.{GROUP}").returncode == 0


def test_crd_reference_is_generated_from_the_crd() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "crd_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


@pytest.mark.e2e
def test_installed_chart_serves_cluster_credentials(
    testenv: Environment,
    helm: Helm,
    crd: None,
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kc: KeycloakProxy,
    realm: dict[str, Any],
    run_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    """clusterCredentials.enabled: the chart's RBAC is enough for the whole lifecycle."""
    suffix = secrets.token_hex(3)
    release, system_ns = f"itop-{suffix}", f"itcare-system-{suffix}"
    teams = [f"team-{suffix}-{i}" for i in range(2)]
    for ns in teams:
        core.create_namespace({"metadata": {"name": ns, "labels": {"itcare-test/org": suffix}}})
    adopt_crd(kubectl, release, system_ns)
    name = f"org-{suffix}"
    try:
        helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            system_ns,
            "--create-namespace",
            "--set",
            f"operator.allowedTokenURLs[0]={kc.base_url}/auth/realms/cloud/",
            "--set",
            "clusterCredentials.enabled=true",
        )
        kubectl("wait", "--for=condition=Established", f"crd/{CLUSTER_PLURAL}.{GROUP}")
        sa = f"{release}-itcare-token-operator"
        config = sa_kubeconfig(testenv, core, system_ns, sa, tmp_path / "sa.kubeconfig")
        deploy = kubernetes.client.AppsV1Api(core.api_client).read_namespaced_deployment(
            sa, system_ns
        )
        chart_args = [
            a
            for a in deploy.spec.template.spec.containers[0].args[1:]
            if not a.startswith(("--metrics-port", "--health-port", "--log-"))
        ]
        op = run_operator(*chart_args, kubeconfig=config, extra_env={"POD_NAMESPACE": system_ns})
        # The API account lives in the release namespace (the default allowed one).
        make_source_secret(core, system_ns, realm["clients"]["itcare-test"])
        custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            CLUSTER_PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ClusterITCareCredential",
                "metadata": {"name": name},
                "spec": {
                    "clientSecretRef": {"name": "itcare-api-account", "namespace": system_ns},
                    "tokenURL": kc.token_url,
                    "targetSecret": {"name": "itcare-token"},
                    "namespaceSelector": {"matchLabels": {"itcare-test/org": suffix}},
                },
            },
        )
        for ns in teams:
            wait_for(f"token in {ns}", lambda n=ns: secret_data(core, n, "itcare-token"))  # type: ignore[misc]
        core.patch_namespace(teams[1], {"metadata": {"labels": {"itcare-test/org": None}}})
        wait_for("unselected copy deleted", lambda: not secret_data(core, teams[1], "itcare-token"))
        custom.delete_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, name)
        wait_for("copies deleted", lambda: not secret_data(core, teams[0], "itcare-token"))
        wait_for(
            "finalizer released",
            lambda: (
                not custom.list_cluster_custom_object(
                    GROUP, VERSION, CLUSTER_PLURAL, field_selector=f"metadata.name={name}"
                )["items"]
            ),
        )
        messages = [
            json.loads(line)["message"] for line in op.output().splitlines() if line.strip()
        ]
        denied = [m for m in messages if re.search(r"Forbidden|(?:^|[\s:(])403(?:[\s)]|$)", m)]
        assert not denied, denied
    finally:
        with contextlib.suppress(kubernetes.client.exceptions.ApiException):
            custom.patch_cluster_custom_object(
                GROUP, VERSION, CLUSTER_PLURAL, name, {"metadata": {"finalizers": None}}
            )
        helm("uninstall", release, "--namespace", system_ns, check=False)
        for ns in teams:
            core.delete_namespace(ns)


def test_notes_warn_when_the_monitoring_api_is_absent(helm: Helm) -> None:
    """The test cluster serves no monitoring.coreos.com: asking for a ServiceMonitor or
    a PrometheusRule renders none, and NOTES say so instead of staying silent."""

    def notes(*args: str) -> str:
        out = helm(
            "install", "notes", str(CHART), "--dry-run=client", "--set", "crds.enabled=false", *args
        ).stdout
        return out.split("NOTES:", 1)[1]

    plain = notes()
    assert "WARNING" not in plain
    assert "Uninstalling the chart keeps the CRDs" in plain
    warned = notes("--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true")
    assert "no ServiceMonitor was created" in warned and "no alerts were created" in warned
