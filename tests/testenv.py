"""pytest fixtures for the real environment (loaded by ``tests/conftest.py``).

Heavy components start once per test run (session scope): the control plane, Keycloak,
and a counting proxy in front of Keycloak. Each test gets a fresh namespace; the
operator runs as a real process (``python -m itcare_operator run``) scoped to it.
Set ``ITCARE_TESTENV_STATE`` to a directory from ``scripts/testenv up`` to reuse a
running environment instead of starting one.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests import environment, node
from tests.environment import Environment, free_port
from tests.proxy import KeycloakProxy

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "itcarecredentials.itcare.cegedim.cloud.yaml"
GROUP, VERSION, PLURAL = "itcare.cegedim.cloud", "v1alpha1", "itcarecredentials"
SOURCE_LABEL = {"itcare.cegedim.cloud/api-account": "true"}

T = TypeVar("T")


def wait_for(
    what: str,
    fn: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    retry_on: tuple[int, ...] = (404, 409),
) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``.

    ``ApiException`` with a status in ``retry_on`` counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except ApiException as exc:
            last = exc
            if exc.status not in retry_on:
                raise
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


NO_NODE = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def testenv(request: pytest.FixtureRequest) -> Iterator[Environment]:
    state = os.environ.get("ITCARE_TESTENV_STATE")
    if state and (Path(state) / "state.json").exists():
        env = Environment.load(Path(state))
        if env.alive():
            yield env
            return
    # A node only when a selected test runs on it, and only where it can run.
    with_node = any(item.get_closest_marker("node") for item in request.session.items)
    if with_node and (reason := node.unavailable_reason()):
        request.config.stash[NO_NODE] = reason
        with_node = False
    # The node tier runs with a 10 s kubelet sync, so that ten refreshes of 60 s tokens
    # fit in five minutes; the default (1 m) is measured by bench/delivery.py.
    os.environ.setdefault("ITCARE_NODE_SYNC_FREQUENCY", "10s")
    env = environment.start(with_node=with_node)
    try:
        yield env
    finally:
        env.stop(remove=not os.environ.get("ITCARE_KEEP_TESTENV"))


@pytest.fixture(scope="session")
def node_env(request: pytest.FixtureRequest, testenv: Environment) -> Environment:
    """The environment, with its node; the node tier skips (never under CI) without one."""
    if not testenv.node:
        reason = request.config.stash.get(NO_NODE, "the running environment has no node")
        message = f"no node: {reason}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI=true: the node tier must run)")
        pytest.skip(message)
    return testenv


@pytest.fixture(scope="session")
def api_client(testenv: Environment) -> Iterator[kubernetes.client.ApiClient]:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(str(testenv.kubeconfig), client_configuration=config)
    client = kubernetes.client.ApiClient(config)
    yield client
    client.close()


@pytest.fixture(scope="session")
def core(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def kubectl(testenv: Environment) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(testenv.bin_dir / "kubectl"), f"--kubeconfig={testenv.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=120,
        )

    return run


@pytest.fixture(scope="session")
def helm(testenv: Environment) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(testenv.bin_dir / "helm"), f"--kubeconfig={testenv.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
            env={
                **os.environ,
                "HELM_CACHE_HOME": str(testenv.directory / "helm-cache"),
                "HELM_CONFIG_HOME": str(testenv.directory / "helm-config"),
                "HELM_DATA_HOME": str(testenv.directory / "helm-data"),
            },
        )

    return run


@pytest.fixture(scope="session")
def crd(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


@pytest.fixture
def namespace(core: kubernetes.client.CoreV1Api) -> Iterator[str]:
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def realm(testenv: Environment) -> dict[str, Any]:
    return testenv.realm()


@pytest.fixture(scope="session")
def keycloak_proxy(testenv: Environment) -> Iterator[KeycloakProxy]:
    proxy = KeycloakProxy(testenv.keycloak_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def kc(keycloak_proxy: KeycloakProxy) -> KeycloakProxy:
    """The proxy, with counters and faults reset for this test."""
    keycloak_proxy.reset()
    return keycloak_proxy


# -- the operator as a process --------------------------------------------------------


class OperatorProcess:
    def __init__(
        self,
        env: Environment,
        log_dir: Path,
        args: list[str],
        *,
        kubeconfig: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.args = args
        self.kubeconfig = kubeconfig or env.kubeconfig
        self.extra_env = extra_env or {}
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = log_dir / f"operator-{secrets.token_hex(3)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def start(self, wait: bool = True) -> OperatorProcess:
        self.log_path = self.log_path.with_name(f"operator-{secrets.token_hex(3)}.log")
        self.logs.append(self.log_path)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "itcare_operator",
                "run",
                f"--metrics-port={self.metrics_port}",
                f"--health-port={self.health_port}",
                "--log-format=json",
                "--log-level=DEBUG",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("ITCARE_")},
                "KUBECONFIG": str(self.kubeconfig),
                **self.extra_env,
            },
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"operator exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/readyz", timeout=1
                ) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for("operator /readyz", ready, timeout)

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def metric(self, metric_name: str, /, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == metric_name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def run_operator(
    testenv: Environment, crd: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(
        *args: str,
        wait: bool = True,
        kubeconfig: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> OperatorProcess:
        op = OperatorProcess(
            testenv, tmp_path, list(args), kubeconfig=kubeconfig, extra_env=extra_env
        )
        started.append(op)
        return op.start(wait=wait)

    yield start
    for op in started:
        op.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for op in started:
            sys.stderr.write(f"\n--- operator log {op.log_path} ---\n{op.output()[-8000:]}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


# -- helpers used by the scenarios --------------------------------------------------------


def make_source_secret(
    core: kubernetes.client.CoreV1Api,
    namespace: str,
    client: dict[str, Any],
    *,
    name: str = "itcare-api-account",
    labelled: bool = True,
    data: dict[str, str] | None = None,
) -> None:
    body = {
        "metadata": {"name": name, "labels": SOURCE_LABEL if labelled else {}},
        "stringData": data
        if data is not None
        else {"client-id": client["client_id"], "client-secret": client["client_secret"]},
    }
    core.create_namespaced_secret(namespace, body)


def make_credential(
    custom: kubernetes.client.CustomObjectsApi,
    namespace: str,
    token_url: str,
    *,
    name: str = "billing",
    source: str = "itcare-api-account",
    target: str = "itcare-token",
    **spec: Any,
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ITCareCredential",
        "metadata": {"name": name},
        "spec": {
            "clientSecretRef": {"name": source},
            "tokenURL": token_url,
            "targetSecret": {"name": target},
            **spec,
        },
    }
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)  # type: ignore[no-any-return]


def get_credential(
    custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str = "billing"
) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[no-any-return]


def condition(cr: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (cr.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond  # type: ignore[no-any-return]
    return {}


def secret_data(
    core: kubernetes.client.CoreV1Api, namespace: str, name: str
) -> dict[str, str] | None:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def events(core: kubernetes.client.CoreV1Api, namespace: str) -> list[Any]:
    return list(core.list_namespaced_event(namespace).items)


def assert_no_leaks(haystacks: list[str], needles: list[str]) -> None:
    """No secret, refresh token or access token appears anywhere we looked."""
    assert needles, "nothing to look for: the scan would prove nothing"
    assert any(haystacks), "nothing was captured: the scan would prove nothing"
    text = "\n".join(haystacks)
    for needle in needles:
        if needle and len(needle) >= 6:
            assert needle not in text, f"a secret value ({len(needle)} chars) leaked"


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj)
