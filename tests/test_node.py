"""The user's path on a real node: ``helm install`` runs the chart's image as pods, and
application pods read the token from the Secret volume.

The environment's node (``tests/node.py``) runs the operator image built from our
Dockerfile; the pods reach the API server through the ``kubernetes`` Service and
Keycloak through a TLS front at the node's bridge address. Tokens of the realm's
``itcare-node`` client live 60 s, so ten refreshes take about five minutes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.environment import Environment
from tests.node import (
    SecretWatcher,
    consumer,
    consumer_reads,
    delivery_delays,
    secret_token,
)
from tests.test_chart import CHART, CLUSTER_PLURAL, adopt_crd
from tests.testenv import (
    GROUP,
    PLURAL,
    SOURCE_LABEL,
    VERSION,
    wait_for,
)

pytestmark = [pytest.mark.env, pytest.mark.node]

Run = Callable[..., subprocess.CompletedProcess[str]]
CLIENT = "itcare-node"
LIFETIME = 60.0
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apps(node_env: Environment, core: kubernetes.client.CoreV1Api) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(core.api_client)


@pytest.fixture(scope="module")
def node_helm(node_env: Environment, helm: Run) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``helm`` with the arguments this environment needs (image, CA, allowed URL)."""
    extra = shlex.split(node_env.node["helm_args"])

    def run(command: str, release: str, namespace: str, *args: str) -> Any:
        base = [command, release, str(CHART), "--namespace", namespace, *extra]
        done = helm(*base, "--set", "operator.logFormat=json", *args, check=False)
        assert done.returncode == 0, f"helm {command} failed: {done.stderr}"
        return done

    return run


def make_namespace(core: kubernetes.client.CoreV1Api, prefix: str, **labels: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name, "labels": {**RESTRICTED, **labels}}})
    return name


@dataclasses.dataclass
class Stage:
    """A test's release and namespaces (the operator's, restricted, and a team's), all
    removed afterwards."""

    core: kubernetes.client.CoreV1Api
    system: str
    team: str
    release: str
    namespaces: list[str] = dataclasses.field(default_factory=list)

    def namespace(self, prefix: str, **labels: str) -> str:
        name = make_namespace(self.core, prefix, **labels)
        self.namespaces.append(name)
        return name


@pytest.fixture
def stage(
    node_env: Environment, core: kubernetes.client.CoreV1Api, kubectl: Run, helm: Run
) -> Iterator[Stage]:
    system, team = make_namespace(core, "itcare-system"), make_namespace(core, "team")
    release = f"itop-{secrets.token_hex(3)}"
    adopt_crd(kubectl, release, system)  # the CRDs exist already; this release takes them
    stage = Stage(core, system, team, release, [team, system])
    yield stage
    helm("uninstall", release, "--namespace", system, "--wait", check=False)
    for ns in stage.namespaces:
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)


def api_account(core: kubernetes.client.CoreV1Api, namespace: str, realm: dict[str, Any]) -> None:
    client = realm["clients"][CLIENT]
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "api-account", "labels": SOURCE_LABEL},
            "stringData": {
                "client-id": client["client_id"],
                "client-secret": client["client_secret"],
            },
        },
    )


def credential(custom: Any, namespace: str, token_url: str, name: str = "app") -> None:
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ITCareCredential",
            "metadata": {"name": name},
            "spec": {
                "clientSecretRef": {"name": "api-account"},
                "tokenURL": token_url,
                "targetSecret": {"name": "itcare-token"},
            },
        },
    )


def pods(core: kubernetes.client.CoreV1Api, namespace: str, selector: str = "") -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def operator_pods(core: kubernetes.client.CoreV1Api, namespace: str) -> list[Any]:
    return pods(core, namespace, "app.kubernetes.io/name=itcare-token-operator")


def ready(pod: Any) -> bool:
    return (
        any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        and pod.metadata.deletion_timestamp is None
    )


def restarts(pod: Any) -> int:
    return sum(c.restart_count for c in pod.status.container_statuses or [])


def crash_looping(pod: Any) -> bool:
    return any(
        c.state.waiting is not None and c.state.waiting.reason == "CrashLoopBackOff"
        for c in pod.status.container_statuses or []
    )


def wait_pods_ready(
    core: kubernetes.client.CoreV1Api, namespace: str, count: int, timeout: float = 180
) -> list[Any]:
    def check() -> list[Any] | None:
        found = [p for p in operator_pods(core, namespace) if ready(p)]
        return found if len(found) == count else None

    return wait_for(f"{count} operator pod(s) Ready in {namespace}", check, timeout, 1.0)


def kill_container(env: Environment, pod: Any) -> None:
    """SIGKILL the pod's container process on the node, as a crash would."""
    container_id = pod.status.container_statuses[0].container_id.split("://", 1)[1]
    tasks = subprocess.run(
        ["ctr", "--address", env.node["containerd_sock"], "-n", "k8s.io", "tasks", "ls"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    pid = next(int(line.split()[1]) for line in tasks if line.startswith(container_id))
    os.kill(pid, signal.SIGKILL)


def lease_holder(coordination: Any, namespace: str) -> str:
    lease = coordination.read_namespaced_lease("itcare-token-operator", namespace)
    return str(lease.spec.holder_identity or "")


# -- 1. default install + 3. application pods ------------------------------------------


def test_default_install_serves_application_pods(
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    apps: kubernetes.client.AppsV1Api,
    kubectl: Run,
    helm: Run,
    node_helm: Run,
    realm: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    """The chart's defaults, in a namespace enforcing the restricted profile: the pod
    runs with zero restarts for more than two token lifetimes, serves /metrics, logs JSON;
    consumer pods with a Secret volume get each new token and never read an expired one;
    a subPath mount never updates (the documented pitfall)."""
    system, team, release = stage.system, stage.team, stage.release
    node_helm("install", release, system)
    (pod,) = wait_pods_ready(core, system, 1)
    api_account(core, team, realm)
    credential(custom, team, node_env.node["pod_token_url"])
    for deployment in (
        consumer(node_env.node["consumer_image"], "reader"),
        consumer(node_env.node["consumer_image"], "subpath-reader", sub_path=True),
    ):
        apps.create_namespaced_deployment(team, deployment)
    started = time.time()
    with SecretWatcher(core, team) as watcher:
        wait_for("the first token", lambda: watcher.writes, 60)
        wait_for(
            "both consumers reading",
            lambda: all(consumer_reads(kubectl, team, d) for d in ("reader", "subpath-reader")),
            120,
            2.0,
        )

        # /metrics through the pod, from outside it: the credential is ready there.
        def ready_series() -> list[str]:
            url = f"http://{pod.status.pod_ip}:9090/metrics"
            with urllib.request.urlopen(url, timeout=10) as resp:
                lines = resp.read().decode().splitlines()
            return [
                line
                for line in lines
                if line.startswith("itcare_credential_ready{")
                and f'namespace="{team}"' in line
                and 'name="app"' in line
                and line.endswith(" 1.0")
            ]

        wait_for("the ready gauge on the pod's /metrics", ready_series, 30)
        # Ten refreshes after the consumers started reading, and two lifetimes at least.
        wait_for(
            "ten refreshes",
            lambda: len(watcher.writes) >= 11 and time.time() - started > 2 * LIFETIME,
            14 * LIFETIME,
            1.0,
        )
        time.sleep(25)  # the last token's delivery, then read the consumers
    reads = consumer_reads(kubectl, team, "reader")
    stuck = consumer_reads(kubectl, team, "subpath-reader")
    (after,) = operator_pods(core, system)

    # The operator pod: same pod, never restarted, logs are JSON.
    assert after.metadata.uid == pod.metadata.uid
    assert restarts(after) == 0, f"operator restarted {restarts(after)} times"
    logs = kubectl("-n", system, "logs", after.metadata.name).stdout.splitlines()
    assert logs and all(json.loads(line)["message"] for line in logs)
    assert any("token refreshed" in json.loads(line)["message"] for line in logs), (
        "no refresh logged"
    )

    # The consumer with a volume saw every token the operator wrote after it started,
    # and never held an expired one.
    assert not watcher.expired_seen, f"the Secret held an expired token: {watcher.expired_seen}"
    expired_reads = [(t, exp) for t, _, exp in reads if t >= exp]
    assert not expired_reads, f"the consumer read an expired token: {expired_reads[:5]}"
    delays = delivery_delays(watcher.writes, reads)
    assert len(delays) >= 9, f"only {len(delays)} refreshes observed by the consumer"
    p50, worst = statistics.median(delays), max(delays)
    record_property("delivery_delay_p50_s", round(p50, 1))
    record_property("delivery_delay_max_s", round(worst, 1))
    record_property("sync_frequency", node_env.node["sync_frequency"])
    print(
        f"\nkubelet delivery (syncFrequency {node_env.node['sync_frequency']}): "
        f"{len(delays)} refreshes, p50 {p50:.1f} s, max {worst:.1f} s"
    )

    # The subPath consumer kept the token it started with, after it expired.
    assert len({fp for _, fp, _ in stuck}) == 1, "a subPath mount was updated"
    assert stuck[-1][0] > stuck[-1][2], "the subPath consumer's token had not expired yet"


# -- 2. two replicas ----------------------------------------------------------------------


def test_two_replicas_take_over_without_restarts(
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kubectl: Run,
    helm: Run,
    node_helm: Run,
    realm: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    """``replicaCount: 2``: both pods Running and Ready (the standby is live), a PDB;
    the leader deleted gracefully, then the new leader force-killed: the other takes
    over within the Lease bound, no token is written twice for one refresh, none
    expires, no pod restarts."""
    system, team, release = stage.system, stage.team, stage.release
    coordination = kubernetes.client.CoordinationV1Api(core.api_client)
    policy = kubernetes.client.PolicyV1Api(core.api_client)
    node_helm("install", release, system, "--set", "replicaCount=2")
    wait_pods_ready(core, system, 2)
    assert policy.list_namespaced_pod_disruption_budget(system).items, "no PDB rendered"
    api_account(core, team, realm)
    credential(custom, team, node_env.node["pod_token_url"])
    with SecretWatcher(core, team) as watcher:
        wait_for("the first token", lambda: watcher.writes, 60)
        # A standby that served no probes was killed by its liveness probe within a
        # minute (3 failures, 20 s apart): watch both pods for longer than that.
        time.sleep(70)
        both = operator_pods(core, system)
        assert len(both) == 2 and all(ready(p) and restarts(p) == 0 for p in both), [
            (p.metadata.name, ready(p), restarts(p)) for p in both
        ]
        takeovers = {}
        killed = ""
        # graceful: kubectl delete; forced: --grace-period=0 --force (the API object
        # goes at once, but the kubelet still sends SIGTERM, so the Lease is released);
        # killed: SIGKILL of the leader's process on the node, a crash: nothing is
        # released, the standby waits out the Lease.
        for how in ("graceful", "forced", "killed"):
            holder = lease_holder(coordination, system)
            leader = next(p for p in both if holder.startswith(p.metadata.name + "_"))
            began = time.time()
            if how == "killed":
                killed = leader.metadata.name
                kill_container(node_env, leader)
            else:
                args = ["--grace-period=0", "--force"] if how == "forced" else []
                kubectl("-n", system, "delete", "pod", leader.metadata.name, "--wait=false", *args)
            new = wait_for(
                f"a new Lease holder after the {how} deletion",
                lambda h=holder: (
                    (lease_holder(coordination, system) or h) != h
                    and lease_holder(coordination, system)
                ),
                60,
                0.2,
            )
            takeovers[how] = time.time() - began
            assert new != holder
            both = wait_pods_ready(core, system, 2)
        time.sleep(LIFETIME)  # the refreshes after the last takeover
    for how, seconds in takeovers.items():
        record_property(f"takeover_{how}_s", round(seconds, 1))
    print("\ntakeover: " + ", ".join(f"{h} {s:.1f} s" for h, s in takeovers.items()))
    # A released Lease is taken at the standby's next poll (2 s); a crashed holder's
    # after the Lease duration (15 s) by the standby's clock, plus one poll.
    assert takeovers["graceful"] < 10, takeovers
    assert takeovers["forced"] < 10, takeovers
    assert takeovers["killed"] < 15 + 2 + 5, takeovers
    assert not watcher.expired_seen, watcher.expired_seen
    # One write per refresh: consecutive tokens at least a third of a lifetime apart
    # (the refresh point is a third to half of the lifetime before expiry).
    gaps = [b[0] - a[0] for a, b in zip(watcher.writes, watcher.writes[1:], strict=False)]
    assert gaps and min(gaps) > LIFETIME / 4, f"a token written twice: gaps {gaps}"
    final = operator_pods(core, system)
    # The killed container was restarted once (as a standby); nothing else restarted.
    expected = {p.metadata.name: 1 if p.metadata.name == killed else 0 for p in final}
    assert {p.metadata.name: restarts(p) for p in final} == expected
    assert not any(crash_looping(p) for p in final)


# -- 4. other modes -------------------------------------------------------------------------


def test_namespaced_install_serves_its_namespace(
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    helm: Run,
    node_helm: Run,
    realm: dict[str, Any],
) -> None:
    """``examples/values-namespaced.yaml``: a Role in each watched namespace, nothing
    cluster-wide but the CRD; a credential in a watched namespace is served."""
    system, team, release = stage.system, stage.team, stage.release
    node_helm(
        "install",
        release,
        system,
        "-f",
        str(CHART.parent.parent / "examples" / "values-namespaced.yaml"),
        "--set-json",
        f'operator.watchNamespaces=["{team}"]',
        "--set",
        "crds.enabled=false",
    )
    wait_pods_ready(core, system, 1)
    api_account(core, team, realm)
    credential(custom, team, node_env.node["pod_token_url"])
    _, expiry = wait_for("a token", lambda: secret_token(core, team), 60)
    assert expiry > time.time()


def test_cluster_credentials_mode_copies_the_token(
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kubectl: Run,
    helm: Run,
    node_helm: Run,
    realm: dict[str, Any],
) -> None:
    """``clusterCredentials.enabled``: one API account in the operator's namespace, the
    token copied to every selected namespace."""
    system, release = stage.system, stage.release
    label = secrets.token_hex(3)
    teams = [stage.namespace("team", **{"itcare-test/node": label}) for _ in range(2)]
    name = f"node-{label}"
    try:
        node_helm("install", release, system, "--set", "clusterCredentials.enabled=true")
        kubectl("wait", "--for=condition=Established", f"crd/{CLUSTER_PLURAL}.{GROUP}")
        wait_pods_ready(core, system, 1)
        api_account(core, system, realm)
        custom.create_cluster_custom_object(
            GROUP,
            VERSION,
            CLUSTER_PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ClusterITCareCredential",
                "metadata": {"name": name},
                "spec": {
                    "clientSecretRef": {"name": "api-account", "namespace": system},
                    "tokenURL": node_env.node["pod_token_url"],
                    "targetSecret": {"name": "itcare-token"},
                    "namespaceSelector": {"matchLabels": {"itcare-test/node": label}},
                },
            },
        )
        copies = [
            wait_for(f"a token in {ns}", lambda ns=ns: secret_token(core, ns), 60) for ns in teams
        ]
        assert len({fp for fp, _ in copies}) == 1, "the copies differ"
    finally:
        # Its finalizer needs the operator: delete it before the release goes.
        with contextlib.suppress(ApiException):
            custom.delete_cluster_custom_object(GROUP, VERSION, CLUSTER_PLURAL, name)
        with contextlib.suppress(AssertionError):
            wait_for(
                "the cluster credential deleted",
                lambda: (
                    not custom.list_cluster_custom_object(
                        GROUP, VERSION, CLUSTER_PLURAL, field_selector=f"metadata.name={name}"
                    )["items"]
                ),
                30,
            )


# -- 5. upgrade and uninstall ---------------------------------------------------------------


def test_upgrade_keeps_tokens_valid_and_uninstall_keeps_the_secret(
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kubectl: Run,
    helm: Run,
    node_helm: Run,
    realm: dict[str, Any],
) -> None:
    """``helm upgrade`` to changed values and a changed image tag rolls the pod (a new
    one waits as standby, then leads) with every token valid throughout; ``helm
    uninstall`` keeps the CRD, the credentials and their target Secrets (chart README):
    the last token stays in place until it expires."""
    system, team, release = stage.system, stage.team, stage.release
    image = node_env.node["operator_image"]
    repository, _, tag = image.rpartition(":")
    retagged = f"{repository}:{tag}-upgrade"
    sock = node_env.node["containerd_sock"]
    subprocess.run(
        ["ctr", "--address", sock, "-n", "k8s.io", "images", "tag", "--force", image, retagged],
        check=True,
        capture_output=True,
    )
    node_helm("install", release, system)
    (old,) = wait_pods_ready(core, system, 1)
    api_account(core, team, realm)
    credential(custom, team, node_env.node["pod_token_url"])
    with SecretWatcher(core, team) as watcher:
        wait_for("the first token", lambda: watcher.writes, 60)
        node_helm(
            "upgrade",
            release,
            system,
            "--set",
            f"image.tag={tag}-upgrade",
            "--set",
            "operator.logLevel=DEBUG",
        )
        (new,) = wait_for(
            "the upgraded pod alone",
            lambda: (
                [
                    p
                    for p in wait_pods_ready(core, system, 1)
                    if p.spec.containers[0].image == retagged
                ]
                or None
            ),
            180,
            1.0,
        )
        assert new.metadata.uid != old.metadata.uid
        time.sleep(LIFETIME)  # a refresh by the new pod
        assert not watcher.expired_seen, watcher.expired_seen
        assert len(watcher.writes) >= 2, "no refresh after the upgrade"
        assert restarts(new) == 0

        # The operator refreshes every 30-35 s and keeps doing so until its process
        # ends, a refresh under way even after SIGTERM (runner.DRAIN_GRACE): the token
        # it leaves is the last one written before its pod is gone, so the watch goes
        # on until then, and one poll after it.
        helm("uninstall", release, "--namespace", system, "--wait")
        wait_for("the operator pods gone", lambda: not operator_pods(core, system), 60)
        watcher.sync()
        last = watcher.writes[-1]
    # As the chart README says: the CRD (crds.keep), the credential and its Secret stay.
    kubectl("get", f"crd/{PLURAL}.{GROUP}")
    custom.get_namespaced_custom_object(GROUP, VERSION, team, PLURAL, "app")
    kept = secret_token(core, team)
    assert kept is not None and kept[0] == last[1], (
        f"the Secret changed after the operator was gone: {kept} after {watcher.writes[-3:]}"
    )
