"""``make demo``: a local control plane, a real Keycloak, the operator, and a token
Secret you can watch being written and refreshed.

By default everything runs locally (``tests/environment.py``). As root, with a real
node: the chart installs the operator's image (built from the Dockerfile) as a pod, and
a consumer pod prints the fingerprint and expiry of the token it reads from its Secret
volume, so you see an application get each new token without a restart. Without root,
the operator runs as a local process (one line says so). Set
``ITCARE_DEMO_CONTEXT=current`` to use your current kube context instead (the CRD and a
namespace ``itcare-demo`` are then created there; Keycloak and the operator still run
on this machine). Ctrl-C stops and cleans up. Without a terminal, the demo exits on its
own once it has shown a refresh.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import environment, node  # noqa: E402

NAMESPACE = "itcare-demo"
CLIENT = "itcare-demo"  # 90 s tokens in the demo realm


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def kubectl(env: dict[str, str], *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(["kubectl", *args], env=env, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def secret(env: dict[str, str]) -> dict[str, Any] | None:
    out = kubectl(env, "-n", NAMESPACE, "get", "secret", "itcare-token", "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def show_secret(doc: dict[str, Any]) -> None:
    data = {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}
    digest = hashlib.sha256(data["access_token"].encode()).hexdigest()[:12]
    annotations = doc["metadata"]["annotations"]
    print(f"  keys:          {', '.join(sorted(data))}")
    print(f"  token:         sha256:{digest} ({len(data['access_token'])} chars; not printed)")
    print(f"  token_type:    {data['token_type']}")
    print(f"  expires_at:    {data['expires_at']}")
    print(f"  refreshed-at:  {annotations['itcare.cegedim.cloud/refreshed-at']}")
    owner = doc["metadata"]["ownerReferences"][0]
    print(f"  owner:         {owner['kind']}/{owner['name']} (deleting it deletes this Secret)")


def apply_examples(env: dict[str, str], testenv: environment.Environment, token_url: str) -> str:
    """examples/, pointed at the local Keycloak and its demo API account; returns the
    credential as applied (it holds no secret)."""
    realm = json.loads(testenv.realm_file.read_text())["clients"][CLIENT]
    account = (ROOT / "examples" / "api-account-secret.yaml").read_text()
    account = account.replace("team-a", NAMESPACE).replace("my-api-account", realm["client_id"])
    account = account.replace("change-me", realm["client_secret"])
    kubectl(env, "apply", "-f", "-", input=account)
    credential = (ROOT / "examples" / "itcarecredential.yaml").read_text()
    credential = credential.replace("team-a", NAMESPACE).replace(
        "  # tokenURL defaults to", f"  tokenURL: {token_url}\n  # tokenURL defaults to"
    )
    kubectl(env, "apply", "-f", "-", input=credential)
    return credential


# The consumer prints a line each time the token in its volume changes.
CONSUMER = (
    "last=; while true; do fp=$(sha256sum /var/run/itcare/access_token | cut -c1-12); "
    'if [ "$fp" != "$last" ]; then echo "$(date -u +%H:%M:%S) read token sha256:$fp, '
    'expires $(cat /var/run/itcare/expires_at)"; last=$fp; fi; sleep 1; done'
)


def main() -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    use_current = os.environ.get("ITCARE_DEMO_CONTEXT") == "current"
    if not use_current:
        reason = node.unavailable_reason()
        if reason is None:
            return node_demo(interactive)
        print(f"no node ({reason}): the operator runs as a local process", flush=True)
    say("Building or finding the components (cached after the first run)")
    paths = environment.ensure_components()
    say(
        "Starting "
        + (
            "Keycloak (realm 'cloud' under /auth)"
            if use_current
            else "etcd, kube-apiserver, kube-controller-manager and Keycloak"
        )
    )
    started = time.monotonic()
    env_obj = environment.start(keycloak=True) if not use_current else None
    keycloak_env = None
    if use_current:  # Keycloak only; the cluster is the user's
        keycloak_env = environment.start(control_plane=False)
    testenv = env_obj or keycloak_env
    assert testenv is not None
    print(f"  up in {time.monotonic() - started:.0f}s; token URL {testenv.token_url}")
    env = dict(os.environ)
    env["PATH"] = f"{paths['kubectl'].parent}:{paths['helm'].parent}:{env['PATH']}"
    if env_obj is not None:
        env["KUBECONFIG"] = str(env_obj.kubeconfig)
    operator: subprocess.Popen[bytes] | None = None
    log_path = testenv.directory / "operator.log"

    def cleanup(*_: Any) -> None:
        if operator and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            operator.wait(20)
        if use_current:
            kubectl(env, "delete", "namespace", NAMESPACE, "--wait=false", check=False)
        testenv.stop()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        say("Installing the CRD and the demo namespace")
        kubectl(
            env,
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(ROOT / "crds" / "itcarecredentials.itcare.cegedim.cloud.yaml"),
        )
        kubectl(
            env,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/itcarecredentials.itcare.cegedim.cloud",
        )
        kubectl(env, "create", "namespace", NAMESPACE, check=False)
        print(apply_examples(env, testenv, testenv.token_url))

        say("Starting the operator (logs: " + str(log_path) + ")")
        metrics_port, health_port = environment.free_port(), environment.free_port()
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "itcare_operator",
                "run",
                f"--namespace={NAMESPACE}",
                "--standalone",
                f"--allowed-token-url={testenv.token_url.rsplit('/protocol/', 1)[0]}/",
                f"--metrics-port={metrics_port}",
                f"--health-port={health_port}",
            ],
            env=env,
            stdout=open(log_path, "wb"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
        )
        created = time.monotonic()
        first = None
        while first is None:
            if operator.poll() is not None:
                print(log_path.read_text()[-3000:])
                raise SystemExit("the operator exited")
            first = secret(env)
            time.sleep(0.3)
        say(f"Target Secret itcare-token written {time.monotonic() - created:.1f}s after start")
        show_secret(first)
        print(kubectl(env, "-n", NAMESPACE, "get", "itccred", "-o", "wide"))
        refreshed_at = first["metadata"]["annotations"]["itcare.cegedim.cloud/refreshed-at"]
        expires = first["metadata"]["annotations"]["itcare.cegedim.cloud/expires-at"]
        say(
            f"Waiting for the refresh (90 s tokens are refreshed with ~30 s left; expiry {expires})"
        )
        while True:
            doc = secret(env)
            if (
                doc
                and doc["metadata"]["annotations"]["itcare.cegedim.cloud/refreshed-at"]
                != refreshed_at
            ):
                break
            time.sleep(1)
        now = dt.datetime.now(dt.UTC).strftime("%H:%M:%SZ")
        say(f"Refreshed at {now}, before the old token expired ({expires})")
        show_secret(doc)
        say("Status")
        status = json.loads(
            kubectl(env, "-n", NAMESPACE, "get", "itccred", "billing", "-o", "json")
        )["status"]
        print(json.dumps(status, indent=2))
        say(f"Metrics excerpt (http://127.0.0.1:{metrics_port}/metrics)")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(
                    (
                        "itcare_token_refresh_total",
                        "itcare_credential_ready",
                        "itcare_token_expiration",
                        "itcare_credentials{",
                    )
                ):
                    print("  " + line)
        say("Poke at it")
        if env_obj is not None:
            print(f"  export KUBECONFIG={env_obj.kubeconfig} PATH={paths['kubectl'].parent}:$PATH")
        print(f"  kubectl -n {NAMESPACE} get itccred -w")
        print(
            f"  kubectl -n {NAMESPACE} annotate itccred billing "
            "itcare.cegedim.cloud/refresh-requested-at=$(date +%s) --overwrite"
        )
        print(
            f"  kubectl -n {NAMESPACE} delete secret itcare-token   # restored with the same token"
        )
        print(f"  kubectl -n {NAMESPACE} get events")
        if interactive:
            say("Running; press Ctrl-C to stop and clean up")
            while operator.poll() is None:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("Cleaning up")
        cleanup()


def node_demo(interactive: bool) -> int:
    """The operator as a pod through the chart, and an application pod reading tokens."""
    # A 10 s kubelet sync (default 1 m) so that the 90 s demo tokens reach the pod with
    # time to spare; the operator is told so (volumeDeliverySeconds, in the helm args).
    os.environ.setdefault("ITCARE_NODE_SYNC_FREQUENCY", "10s")
    say("Building or finding the components and images (cached after the first run)")
    paths = environment.ensure_components()
    started = time.monotonic()
    say("Starting etcd, kube-apiserver, controller-manager, scheduler, Keycloak and a node")
    testenv = environment.start(with_node=True)
    print(f"  up in {time.monotonic() - started:.0f}s; node {testenv.node['name']} Ready")
    env = dict(os.environ)
    env["PATH"] = f"{paths['kubectl'].parent}:{paths['helm'].parent}:{env['PATH']}"
    env["KUBECONFIG"] = str(testenv.kubeconfig)
    env["HELM_CACHE_HOME"] = str(testenv.directory / "helm-cache")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        say("helm install: the operator's image as a pod (namespace itcare-system)")
        kubectl(env, "create", "namespace", "itcare-system")
        kubectl(
            env,
            "label",
            "namespace",
            "itcare-system",
            "pod-security.kubernetes.io/enforce=restricted",
        )
        helm = [
            "helm",
            "install",
            "itcare-token-operator",
            str(ROOT / "charts" / "itcare-token-operator"),
            "--namespace",
            "itcare-system",
            *shlex.split(testenv.node["helm_args"]),
            "--wait",
            "--timeout=3m",
        ]
        print("  " + " ".join(helm[:6]) + " ...")
        subprocess.run(helm, env=env, check=True, capture_output=True)
        print(kubectl(env, "-n", "itcare-system", "get", "pods", "-o", "wide"))
        kubectl(env, "create", "namespace", NAMESPACE)
        say("The API account Secret and this ITCareCredential (namespace itcare-demo)")
        print(apply_examples(env, testenv, testenv.node["pod_token_url"]))
        created = time.monotonic()
        while (first := secret(env)) is None:
            time.sleep(0.3)
        say(f"Target Secret itcare-token written {time.monotonic() - created:.1f}s later")
        show_secret(first)
        say("An application pod mounts it as a volume and reads the token every second")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "itcare-client", "namespace": NAMESPACE},
            "spec": {
                "containers": [
                    {
                        "name": "client",
                        "image": testenv.node["consumer_image"],
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", CONSUMER],
                        "volumeMounts": [
                            {"name": "token", "mountPath": "/var/run/itcare", "readOnly": True}
                        ],
                    }
                ],
                "volumes": [{"name": "token", "secret": {"secretName": "itcare-token"}}],
            },
        }
        kubectl(env, "apply", "-f", "-", input=json.dumps(pod))
        kubectl(env, "-n", NAMESPACE, "wait", "--for=condition=Ready", "pod/itcare-client")
        say("Its log, as each refreshed token reaches it (90 s tokens; no restart)")
        shown = 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            lines = kubectl(env, "-n", NAMESPACE, "logs", "itcare-client").splitlines()
            for line in lines[shown:]:
                print("  " + line, flush=True)
            shown = len(lines)
            if shown >= 3 and not interactive:
                break
            time.sleep(2)
        print(kubectl(env, "-n", NAMESPACE, "get", "itccred", "-o", "wide"))
        print(kubectl(env, "-n", "itcare-system", "get", "pods"))
        say("Poke at it")
        print(f"  export KUBECONFIG={testenv.kubeconfig} PATH={paths['kubectl'].parent}:$PATH")
        print(f"  kubectl -n {NAMESPACE} logs -f itcare-client")
        print("  kubectl -n itcare-system logs deploy/itcare-token-operator")
        if interactive:
            say("Running; press Ctrl-C to stop and clean up")
            while True:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("Cleaning up")
        testenv.stop()


if __name__ == "__main__":
    sys.exit(main())
