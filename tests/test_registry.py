"""A release through a real OCI registry, as users install it: ``make publish`` pushes the
image by digest and the chart to the test registry (``crane registry serve`` on loopback,
trusted by the node's containerd), signs both and attests an SBOM; ``helm install
oci://...`` then runs the operator on the node from an image the kubelet pulls.

No image is pre-loaded under the registry's name: the node has only the locally built
``localhost/...`` images, and the admission policy lets pods name those and the test
registry's, nothing else. The published image's layers are those of the local operator
image, so containerd fetches the manifest from the registry and reuses the layers.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shlex
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from itcare_operator import __version__
from tests import test_node
from tests.consumer_pods import snippet_pods_follow_the_secret_volume
from tests.environment import Environment, component_paths
from tests.node import SecretWatcher, secret_token
from tests.test_node import Stage, api_account, credential, wait_pods_ready
from tests.testenv import wait_for

# test_node's fixtures: a release's namespaces (removed afterwards), and the apps API.
stage = test_node.stage
apps = test_node.apps

pytestmark = [pytest.mark.env, pytest.mark.node]

ROOT = Path(__file__).resolve().parent.parent
CHART_PATH = "charts/itcare-token-operator"
Run = Callable[..., subprocess.CompletedProcess[str]]


@dataclasses.dataclass
class Published:
    registry: str
    release: dict[str, str]
    public_key: Path
    directory: Path
    seconds: float

    @property
    def chart(self) -> str:
        return f"oci://{self.registry}/charts/itcare-token-operator"


def tool(name: str) -> str:
    return str(component_paths()[name])


def cosign(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("cosign"), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env={**os.environ, "COSIGN_PASSWORD": ""},
    )


@pytest.fixture(scope="module")
def published(node_env: Environment, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """``make publish REGISTRY=<the test registry>`` with a fresh cosign key."""
    registry = node_env.node["registry"]
    out = tmp_path_factory.mktemp("publish")
    cosign("generate-key-pair", "--output-key-prefix", str(out / "cosign"), check=True)
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "--no-print-directory", "publish", f"REGISTRY={registry}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={
            **os.environ,
            "COSIGN_KEY": str(out / "cosign.key"),
            "COSIGN_PASSWORD": "",
            "PLAIN_HTTP": "1",
            "PUBLISH_OUT": str(out),
        },
    )
    seconds = time.monotonic() - started
    assert proc.returncode == 0, (
        f"make publish failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    release = json.loads((out / "release.json").read_text())
    print(f"\npublished in {seconds:.0f}s: {json.dumps(release, indent=2)}")
    return Published(registry, release, out / "cosign.pub", out, seconds)


def helm_args(env: Environment) -> list[str]:
    """The environment's chart arguments (CA, allowed token URL, delivery bound) without
    its image: the published chart names its own."""
    args, out = shlex.split(env.node["helm_args"]), []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if not value.startswith("image."):
            out += [flag, value]
    return out


def images_on_node(env: Environment) -> list[str]:
    proc = subprocess.run(
        ["ctr", "--address", env.node["containerd_sock"], "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()


# -- the published artifacts ---------------------------------------------------------------


def test_published_release_is_signed_and_attested(
    published: Published, record_property: Callable[[str, object], None]
) -> None:
    record_property("publish_seconds", round(published.seconds, 1))
    release, key, registry = published.release, str(published.public_key), published.registry
    assert release["version"] == __version__
    assert release["image"].startswith(f"{registry}/itcare-token-operator@sha256:")
    assert release["chart_ref"].startswith(f"{registry}/charts/itcare-token-operator@sha256:")
    flags = ["--key", key, "--insecure-ignore-tlog=true", "--allow-http-registry"]
    for ref in (release["image"], release["chart_ref"]):
        proc = cosign("verify", *flags, ref)
        assert proc.returncode == 0, proc.stderr
        (payload,) = json.loads(proc.stdout)
        assert payload["critical"]["image"]["docker-manifest-digest"] == ref.split("@")[1]
    proc = cosign("verify-attestation", *flags, "--type", "spdxjson", release["image"])
    assert proc.returncode == 0, proc.stderr
    statement = json.loads(base64.b64decode(json.loads(proc.stdout.splitlines()[0])["payload"]))
    assert statement["predicateType"] == "https://spdx.dev/Document"
    names = {p["name"] for p in statement["predicate"]["packages"]}
    assert {"kopf", "kubernetes", "httpx", "itcare-token-operator"} <= names

    # The chart in the registry pins exactly the signed image.
    chart_values = subprocess.run(
        [tool("helm"), "show", "values", published.chart, "--version", __version__, "--plain-http"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HELM_CONFIG_HOME": str(published.directory / "helm")},
    ).stdout
    image = yaml.safe_load(chart_values)["image"]
    assert f"{image['repository']}@{image['digest']}" == release["image"]

    # A tampered image (same repository, one label changed) has no valid signature.
    tampered = subprocess.run(
        [
            tool("crane"),
            "mutate",
            "--insecure",
            release["image"],
            "--label",
            "org.example.tampered=true",
            "-t",
            f"{registry}/itcare-token-operator:tampered",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "@sha256:" in tampered and tampered.split("@")[1] != release["image"].split("@")[1]
    proc = cosign("verify", *flags, tampered)
    assert proc.returncode != 0
    assert "no signatures found" in proc.stderr or "no matching signatures" in proc.stderr
    # And a signature made with another key does not verify with the release key.
    other = published.directory / "other"
    other.mkdir()
    cosign("generate-key-pair", "--output-key-prefix", str(other / "cosign"), check=True)
    proc = cosign("verify", "--key", str(other / "cosign.pub"), *flags[2:], release["image"])
    assert proc.returncode != 0


# -- installing from the registry ------------------------------------------------------------


@pytest.fixture
def oci_helm(node_env: Environment, helm: Run) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(command: str, release: str, namespace: str, chart: str, *args: str) -> Any:
        done = helm(
            command,
            release,
            chart,
            "--plain-http",
            "--namespace",
            namespace,
            *helm_args(node_env),
            *args,
            check=False,
        )
        assert done.returncode == 0, f"helm {command} failed: {done.stderr}"
        return done

    return run


def wait_token(core: kubernetes.client.CoreV1Api, namespace: str) -> tuple[str, float]:
    return wait_for("a token in the target Secret", lambda: secret_token(core, namespace), 90, 1.0)


def test_helm_install_from_the_registry_pulls_the_image_and_serves_a_token(
    published: Published,
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    kubectl: Run,
    oci_helm: Run,
    realm: dict[str, Any],
    record_property: Callable[[str, object], None],
) -> None:
    image = published.release["image"]
    repository = image.split("@")[0]
    assert not [i for i in images_on_node(node_env) if i.startswith(repository)], (
        "the image is already on the node"
    )
    started = time.monotonic()
    oci_helm("install", stage.release, stage.system, published.chart, "--version", __version__)
    (pod,) = wait_pods_ready(core, stage.system, 1, timeout=300)
    record_property("install_to_ready_seconds", round(time.monotonic() - started, 1))
    assert pod.spec.containers[0].image == image
    assert pod.status.container_statuses[0].image_id.endswith(image.split("@")[1])
    events = core.list_namespaced_event(
        stage.system, field_selector=f"involvedObject.name={pod.metadata.name}"
    ).items
    pulled = [e.message for e in events if e.reason == "Pulled"]
    assert any("Successfully pulled image" in m for m in pulled), pulled
    print(f"\nkubelet: {pulled[0]}")
    # The registry served the image's manifest to the node.
    log = (node_env.directory / "registry.log").read_text()
    digest = image.split("@")[1]
    assert f"GET /v2/itcare-token-operator/manifests/{digest}" in log
    blobs = [line for line in log.splitlines() if "GET /v2/itcare-token-operator/blobs/" in line]
    print(f"registry: the image's manifest and {len(blobs)} blob GETs served")

    # The operator from the registry serves a credential to application pods: the
    # re-read snippets and the env-var wrapper of docs/consuming-tokens.md, created
    # before the Secret exists, each following a refresh without a restart.
    snippet_pods_follow_the_secret_volume(
        node_env, stage.team, core, custom, kubectl, realm, record_property
    )
    record_property("install_to_second_token_seconds", round(time.monotonic() - started, 1))


def previous_chart(directory: Path) -> tuple[str, Path]:
    """The chart of the release before this one, from the repository's history: the tree
    just before the commit that set the chart's current version."""
    revs = subprocess.run(
        ["git", "rev-list", "HEAD", "--", f"{CHART_PATH}/Chart.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    def version_at(rev: str) -> str | None:
        shown = subprocess.run(
            ["git", "show", f"{rev}:{CHART_PATH}/Chart.yaml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return str(yaml.safe_load(shown.stdout)["version"]) if shown.returncode == 0 else None

    bumped = None
    for rev in revs:
        if version_at(rev) != __version__:
            break
        bumped = rev
    if bumped is None or version_at(f"{bumped}^") in (None, __version__):
        pytest.fail("no earlier chart version in the repository's history (a shallow clone?)")
    archive = directory / "previous.tar"
    subprocess.run(
        ["git", "archive", "-o", str(archive), f"{bumped}^", CHART_PATH],
        cwd=ROOT,
        check=True,
    )
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    version = version_at(f"{bumped}^")
    assert version
    return version, directory / CHART_PATH


@pytest.fixture
def previous_published(
    published: Published, helm: Run, tmp_path: Path
) -> Iterator[tuple[str, Published]]:
    """The previous chart version in the same registry, as its release would have put it."""
    version, chart = previous_chart(tmp_path)
    helm("package", str(chart), "--destination", str(tmp_path))
    helm(
        "push",
        str(tmp_path / f"itcare-token-operator-{version}.tgz"),
        f"oci://{published.registry}/charts",
        "--plain-http",
    )
    yield version, published


def test_upgrade_from_the_previous_chart_keeps_tokens_valid(
    previous_published: tuple[str, Published],
    node_env: Environment,
    stage: Stage,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    apps: kubernetes.client.AppsV1Api,
    kubectl: Run,
    oci_helm: Run,
    realm: dict[str, Any],
) -> None:
    previous, published = previous_published
    repository, digest = published.release["image"].split("@")
    image = ["--set", f"image.repository={repository}", "--set", f"image.digest={digest}"]
    oci_helm("install", stage.release, stage.system, published.chart, "--version", previous, *image)
    wait_pods_ready(core, stage.system, 1, timeout=300)
    api_account(core, stage.team, realm)
    credential(custom, stage.team, node_env.node["pod_token_url"])
    wait_token(core, stage.team)
    with SecretWatcher(core, stage.team) as watcher:
        oci_helm("upgrade", stage.release, stage.system, published.chart, "--version", __version__)

        def upgraded() -> bool:
            dep = apps.list_namespaced_deployment(stage.system).items[0]
            labels = dep.metadata.labels or {}
            status = dep.status
            return (
                labels.get("helm.sh/chart") == f"itcare-token-operator-{__version__}"
                and status.updated_replicas == 1
                and status.ready_replicas == 1
                and (status.replicas or 0) == 1
            )

        wait_for("the upgraded Deployment rolled out", upgraded, 300, 2.0)
        writes_at_upgrade = len(watcher.writes)
        # A refresh by the new pod (tokens of this client live 60 s).
        wait_for(
            "a refresh by the upgraded operator",
            lambda: len(watcher.writes) > writes_at_upgrade,
            120,
            1.0,
        )
    assert not watcher.expired_seen, f"an expired token was in the Secret: {watcher.expired_seen}"
    obj = custom.get_namespaced_custom_object(
        "itcare.cegedim.cloud", "v1alpha1", stage.team, "itcarecredentials", "app"
    )
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    crd = json.loads(
        kubectl("get", "crd/itcarecredentials.itcare.cegedim.cloud", "-o", "json").stdout
    )
    assert crd["metadata"]["annotations"]["itcare.cegedim.cloud/version"] == __version__
