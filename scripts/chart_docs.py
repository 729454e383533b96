"""Generate the chart README's values table from the ``# --`` comments in values.yaml.

python scripts/chart_docs.py          # rewrite charts/itcare-token-operator/README.md
python scripts/chart_docs.py --check  # exit 1 when the README is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "itcare-token-operator"

HEADER = """# itcare-token-operator Helm chart

Keeps a fresh cegedim.cloud ITCare OAuth2 token in a Kubernetes Secret. See the
repository README for what the operator does and `docs/` for the full reference.

```sh
helm install itcare-token-operator \\
  oci://ghcr.io/itcare-token-operator/charts/itcare-token-operator --version {version} \\
  --namespace itcare-system --create-namespace
kubectl apply -f examples/api-account-secret.yaml -f examples/itcarecredential.yaml
```

The published chart pins its image by digest; both are signed with cosign and the image
carries an SPDX SBOM attestation (repository README, "Verify a release"). From a clone,
`charts/itcare-token-operator` installs the same chart with the image tag `{version}`.

Two RBAC modes: cluster-wide (default, a ClusterRole) or namespaced
(`operator.watchNamespaces`, a Role and RoleBinding in each listed namespace). The CRD
is rendered from the repository's `crds/` and kept on uninstall (`crds.keep`).
The pod runs with the restricted PodSecurity profile.

## Replicas, probes and upgrades

With `replicaCount` > 1 the replicas elect a leader through a `coordination.k8s.io`
Lease (15 s, renewed every 2 s); only the leader refreshes. Every replica serves
`/healthz` and `/readyz` from its start: a standby is live while it polls the Lease and
ready while it reaches the API server; the leader is ready once its initial listing is
done. A PodDisruptionBudget (`minAvailable: 1`) is rendered when `replicaCount` > 1.
Measured on a real node (`tests/test_node.py`): a leader deleted normally hands over at
once (it releases the Lease), a leader killed outright within the Lease duration plus
one poll (about 17 s); stored tokens stay valid throughout and the new leader mints none
while they are. `helm upgrade` rolls the pods one at a time (`maxSurge: 1`,
`maxUnavailable: 0`): the new pod waits as standby until the old one releases the Lease.

## Uninstall

`helm uninstall` removes the operator, not what it made: the CRDs stay (`crds.keep`),
so do the ITCareCredentials and their target Secrets, holding the last token. Nothing
refreshes them any more: applications keep working until that token expires (at most
its lifetime, 20 minutes for ITCare), then get 401s. Reinstalling the chart resumes
refreshing (the stored tokens are reused while valid). Deleting an ITCareCredential
deletes its target Secret (owner reference), unless its
`spec.targetSecret.deletionPolicy` is `Retain` (as in External Secrets): then the Secret
stays with its last token. Deleting the CRD deletes every credential and so every
target Secret whose policy is `Delete`.

Monitoring, each opt-in: `serviceMonitor.enabled` (a prometheus-operator ServiceMonitor,
with `honorLabels` so a series keeps the credential's namespace), `prometheusRule.enabled`
(four alerts, each proven with `promtool test rules`), `grafanaDashboard.enabled` (a
dashboard ConfigMap for the Grafana sidecar, label `grafana_dashboard: "1"`). Metrics,
alerts, dashboard and the JSON log fields are described in `docs/metrics-and-alerts.md`.

## Values

Generated from the comments in `values.yaml` by `scripts/chart_docs.py`.

| Key | Default | Description |
| --- | --- | --- |
"""


def rows() -> list[tuple[str, str, str]]:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    out: list[tuple[str, str, str]] = []
    path: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        if not stripped or stripped.startswith("-") or ":" not in stripped:
            continue
        key = stripped.split(":", 1)[0]
        path = [(i, k) for i, k in path if i < indent] + [(indent, key)]
        if comment:
            dotted = ".".join(k for _, k in path)
            node = values
            for _, k in path:
                node = node[k]
            out.append((dotted, json.dumps(node), " ".join(comment)))
            comment = []
    return out


def render() -> str:
    body = "".join(f"| `{key}` | `{default}` | {text} |\n" for key, default, text in rows())
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    return HEADER.replace("{version}", version) + body


def main() -> int:
    readme = CHART / "README.md"
    content = render()
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != content:
            print(
                "charts/itcare-token-operator/README.md is out of date: run scripts/chart_docs.py"
            )
            return 1
        return 0
    readme.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
