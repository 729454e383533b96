"""The real test environment: etcd, kube-apiserver, kube-controller-manager, Keycloak.

Binaries come from ``scripts/build-components`` (built from the Go module proxy and
Maven Central, cached under ``~/.cache/itcare-operator``). Everything listens on
random loopback ports; state lives in one temporary directory.

Used by the pytest fixtures (``tests/testenv.py``), by ``scripts/testenv`` for a
person at the keyboard, by ``make demo`` and by the benchmarks::

    python -m tests.environment up [--node]   # start in the background, print exports
    python -m tests.environment env     # print the exports of the running one
    python -m tests.environment down    # stop it and remove its state
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests import node

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ITCARE_CACHE", Path.home() / ".cache" / "itcare-operator"))
REALM_FILE = ROOT / "tests" / "keycloak" / "cloud-realm.json"
STATE_LINK = Path(os.environ.get("ITCARE_TESTENV_STATE", ROOT / ".testenv"))

CONTROLLERS = ["garbagecollector", "namespace", "serviceaccount", "serviceaccount-token"]
# What a Deployment, a PodDisruptionBudget and a Service need once pods can run.
NODE_CONTROLLERS = [
    "deployment",
    "replicaset",
    "disruption",
    "endpointslice",
    "endpoint",
    "nodelifecycle",  # lifts the not-ready taint that admission puts on a new node
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt for service-account volumes
]
# What ``scripts/testenv up --node`` exports about the node (see the node issue's interface).
NODE_EXPORTS = {
    "ITCARE_TEST_IMAGE": "operator_image",
    "ITCARE_TEST_CONSUMER_IMAGE": "consumer_image",
    "ITCARE_TEST_POD_TOKEN_URL": "pod_token_url",
    "ITCARE_TEST_HOST_FROM_PODS": "host_from_pods",
    "ITCARE_TEST_HELM_ARGS": "helm_args",
    "ITCARE_TEST_REGISTRY": "registry",
}


def versions() -> dict[str, str]:
    out = {}
    for line in (ROOT / "scripts" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def component_paths() -> dict[str, Path]:
    v = versions()
    kube = CACHE / f"kubernetes-{v['KUBERNETES_VERSION']}"
    return {
        "etcd": CACHE / f"etcd-{v['ETCD_VERSION']}" / "etcd",
        "kube-apiserver": kube / "kube-apiserver",
        "kube-controller-manager": kube / "kube-controller-manager",
        "kube-scheduler": kube / "kube-scheduler",
        "kubelet": kube / "kubelet",
        "kube-proxy": kube / "kube-proxy",
        "kubectl": kube / "kubectl",
        "helm": CACHE / f"helm-{v['HELM_VERSION']}-kube1.{v['HELM_KUBE_MINOR']}" / "helm",
        "keycloak": CACHE / f"keycloak-{v['KEYCLOAK_VERSION']}",
        "crane": CACHE / f"crane-{v['GO_CONTAINERREGISTRY_VERSION']}" / "crane",
        "cosign": CACHE / f"cosign-{v['COSIGN_VERSION']}" / "cosign",
        "syft": CACHE / f"syft-{v['SYFT_VERSION']}" / "syft",
    }


def ensure_components() -> dict[str, Path]:
    paths = component_paths()
    if not all(p.exists() for p in paths.values()):
        subprocess.run([str(ROOT / "scripts" / "build-components"), "all"], check=True)
    return paths


def find_java() -> Path:
    """A JDK >= 21 under /usr/lib/jvm (Keycloak 26 needs it)."""
    env_home = os.environ.get("KEYCLOAK_JAVA_HOME")
    candidates = [Path(env_home)] if env_home else sorted(Path("/usr/lib/jvm").glob("*"))
    best: tuple[int, Path] | None = None
    for home in candidates:
        java = home / "bin" / "java"
        if not java.exists() or home.is_symlink():
            continue
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if major >= 21 and (best is None or major > best[0]):
            best = (major, home)
    if best is None:
        raise RuntimeError("Keycloak needs a JDK >= 21 under /usr/lib/jvm; none found")
    return best[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- PKI ---------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = (
            x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> None:
    ca_key = _key()
    ca_name = _name("itcare-test-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key = _key()
    server = _cert(
        _name("kube-apiserver"),
        server_key,
        ca_name,
        ca_key,
        sans=[
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
        ],
    )
    # The TLS front that pods reach Keycloak through (node tier).
    front_key = _key()
    front = _cert(
        _name("keycloak"),
        front_key,
        ca_name,
        ca_key,
        sans=[x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", *extra_ips)],
    )
    admin_key = _key()
    admin = _cert(_name("itcare-admin", "system:masters"), admin_key, ca_name, ca_key, client=True)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "apiserver.crt": server.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(server_key),
        "admin.crt": admin.public_bytes(serialization.Encoding.PEM),
        "front.crt": front.public_bytes(serialization.Encoding.PEM),
        "front.key": _pem_key(front_key),
        "admin.key": _pem_key(admin_key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)


def kubeconfig(
    server: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    user: str = "admin",
) -> dict[str, Any]:
    creds: dict[str, str] = {}
    if cert and key:
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        creds = {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "itcare-test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "itcare-test", "context": {"cluster": "itcare-test", "user": user}}],
        "current-context": "itcare-test",
    }


# -- processes ---------------------------------------------------------------------


@dataclasses.dataclass
class Environment:
    """A running environment; ``state.json`` in ``directory`` describes it."""

    directory: Path
    processes: dict[str, int] = dataclasses.field(default_factory=dict)
    api_url: str = ""
    token_url: str = ""
    keycloak_url: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    node: dict[str, str] = dataclasses.field(default_factory=dict)
    """The node tier's facts (empty without a node): images, addresses, helm arguments."""

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def realm_file(self) -> Path:
        return self.directory / "realm.json"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def realm(self) -> dict[str, Any]:
        return json.loads(self.realm_file.read_text())  # type: ignore[no-any-return]

    def save(self) -> None:
        doc = {
            "directory": str(self.directory),
            "processes": self.processes,
            "api_url": self.api_url,
            "token_url": self.token_url,
            "keycloak_url": self.keycloak_url,
            "timings": self.timings,
            "node": self.node,
        }
        (self.directory / "state.json").write_text(json.dumps(doc, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Environment:
        doc = json.loads((directory / "state.json").read_text())
        return cls(
            directory=Path(doc["directory"]),
            processes={k: int(v) for k, v in doc["processes"].items()},
            api_url=doc["api_url"],
            token_url=doc["token_url"],
            keycloak_url=doc["keycloak_url"],
            timings=doc.get("timings", {}),
            node=doc.get("node", {}),
        )

    def alive(self) -> bool:
        return bool(self.processes) and all(_alive(pid) for pid in self.processes.values())

    def exports(self) -> str:
        path = f"{self.bin_dir}:{os.environ.get('PATH', '')}"
        return "\n".join(
            [
                f"export KUBECONFIG={self.kubeconfig}",
                f"export PATH={path}",
                f"export ITCARE_TEST_TOKEN_URL={self.token_url}",
                f"export ITCARE_TEST_REALM={self.realm_file}",
                f"export ITCARE_TESTENV_STATE={self.directory}",
                *(
                    f"export {key}={shlex.quote(self.node[field])}"
                    for key, field in NODE_EXPORTS.items()
                    if self.node
                ),
            ]
        )

    def stop(self, *, remove: bool = True) -> None:
        if self.node:
            for name in ("kube-proxy", "kubelet"):
                if pid := self.processes.pop(name, None):
                    _terminate(pid)
            sock = Path(self.node["containerd_sock"])
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                node.stop_containers(sock)
        for name in (
            "containerd",
            "registry",
            "tls-front",
            "kube-scheduler",
            "kube-controller-manager",
            "keycloak",
            "kube-apiserver",
            "etcd",
        ):
            pid = self.processes.get(name)
            if pid:
                _terminate(pid)
        self.processes.clear()
        if self.node:
            node.kill_shims(Path(self.node["containerd_sock"]))
            kube_proxy = component_paths()["kube-proxy"]
            subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False)
            node.unmount_under(self.directory)
            node.cleanup_network()
        if remove:
            node.remove_tree(self.directory) if self.node else shutil.rmtree(
                self.directory, ignore_errors=True
            )

    def restart(self, name: str) -> None:
        """Stop and start one component with the same flags (fault tests)."""
        pid = self.processes.get(name)
        if pid:
            _terminate(pid)
        args = json.loads((self.directory / f"{name}.args.json").read_text())
        self.processes[name] = _spawn(name, args["argv"], self.directory, args.get("env"))
        self.save()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 20.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _spawn(name: str, argv: list[str], directory: Path, env: dict[str, str] | None = None) -> int:
    log = open(directory / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    (directory / f"{name}.args.json").write_text(json.dumps({"argv": argv, "env": env}))
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=full_env,
        cwd=directory,
    )
    return proc.pid


def _wait(what: str, check: Any, timeout: float, pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not _alive(pid):
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited during start-up; last log lines:\n{tail}")
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; last log lines:\n{tail}")


def _https_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start(
    directory: Path | None = None,
    *,
    keycloak: bool = True,
    control_plane: bool = True,
    with_node: bool = False,
) -> Environment:
    """Start the environment; ``with_node`` adds a real node (root only: see ``tests/node``)."""
    paths = ensure_components()
    images = node.build_images() if with_node else {}
    directory = directory or Path(tempfile.mkdtemp(prefix="itcare-testenv-"))
    directory.mkdir(parents=True, exist_ok=True)
    env = Environment(directory)
    try:
        _start(env, paths, keycloak=keycloak, control_plane=control_plane, images=images)
    except BaseException:
        env.stop(remove=False)
        raise
    env.save()
    return env


def _start(
    env: Environment,
    paths: dict[str, Path],
    *,
    keycloak: bool,
    control_plane: bool,
    images: dict[str, str],
) -> None:
    d = env.directory
    pki = d / "pki"
    pki.mkdir(exist_ok=True)
    if images:
        node.ensure_bridge()
        env.node = {"containerd_sock": str(d / "containerd" / "containerd.sock")}
    make_pki(pki, (node.HOST_FROM_PODS,) if images else ())
    env.bin_dir.mkdir(exist_ok=True)
    for tool in ("kubectl", "helm"):
        link = env.bin_dir / tool
        if not link.exists():
            link.symlink_to(paths[tool])

    # Keycloak first: it takes longest, and it starts while the control plane does.
    kc_started = time.monotonic()
    if keycloak:
        kc_port = free_port()
        env.keycloak_url = f"http://127.0.0.1:{kc_port}/auth"
        env.token_url = f"{env.keycloak_url}/realms/cloud/protocol/openid-connect/token"
        kc_home = paths["keycloak"]
        (kc_home / "data" / "import").mkdir(parents=True, exist_ok=True)
        shutil.copy(REALM_FILE, kc_home / "data" / "import" / "cloud-realm.json")
        java_home = find_java()
        env.processes["keycloak"] = _spawn(
            "keycloak",
            [
                str(kc_home / "bin" / "kc.sh"),
                "start-dev",
                "--import-realm",
                f"--http-port={kc_port}",
                "--http-host=127.0.0.1",
                "--http-relative-path=/auth",
                "--hostname-strict=false",
                "--db=dev-mem",
                "--cache=local",
                "--http-management-port",
                str(free_port()),
                "--log-level=WARN",
            ],
            d,
            {
                "JAVA_HOME": str(java_home),
                "PATH": f"{java_home}/bin:{os.environ.get('PATH', '')}",
                "JAVA_OPTS_APPEND": "-XX:TieredStopAtLevel=1",
            },
        )
        realm = json.loads(REALM_FILE.read_text())
        env.realm_file.write_text(
            json.dumps(
                {
                    "token_url": env.token_url,
                    "clients": {
                        c["clientId"]: {
                            "client_id": c["clientId"],
                            "client_secret": c["secret"],
                            "enabled": c["enabled"],
                            "service_accounts": c["serviceAccountsEnabled"],
                            "lifespan": int(c["attributes"]["access.token.lifespan"]),
                        }
                        for c in realm["clients"]
                    },
                },
                indent=2,
            )
        )

    if control_plane:
        _start_control_plane(env, paths)
    if images:
        _start_node(env, paths, images)
    if keycloak:
        well_known = f"{env.keycloak_url}/realms/cloud/.well-known/openid-configuration"
        _wait(
            "keycloak",
            lambda: _http_ok(well_known),
            240,
            env.processes["keycloak"],
            d / "keycloak.log",
        )
        env.timings["keycloak_s"] = round(time.monotonic() - kc_started, 2)


def _start_control_plane(env: Environment, paths: dict[str, Path]) -> None:
    d = env.directory
    pki = d / "pki"
    started = time.monotonic()
    etcd_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    env.processes["etcd"] = _spawn(
        "etcd",
        [
            str(paths["etcd"]),
            "--data-dir",
            str(d / "etcd"),
            "--name",
            "itcare-test",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=itcare-test=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        d,
    )
    _wait("etcd", lambda: _http_ok(f"{etcd_url}/health"), 30, env.processes["etcd"], d / "etcd.log")
    env.timings["etcd_s"] = round(time.monotonic() - started, 2)

    api_port = free_port()
    # With a node, pods reach the API server at the host's address on the pod bridge.
    address = node.HOST_FROM_PODS if env.node else "127.0.0.1"
    env.api_url = f"https://{address}:{api_port}"
    node_flags = (
        [
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        if env.node
        # Without a node no pod runs, and pods need no service-account token.
        else ["--disable-admission-plugins=ServiceAccount"]
    )
    env.processes["kube-apiserver"] = _spawn(
        "kube-apiserver",
        [
            str(paths["kube-apiserver"]),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={api_port}",
            f"--cert-dir={d / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            *node_flags,
            "--event-ttl=1h",
            "--v=0",
        ],
        d,
    )
    ca_ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ca_ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    _wait(
        "kube-apiserver",
        lambda: _https_ok(f"{env.api_url}/readyz", ca_ctx),
        90,
        env.processes["kube-apiserver"],
        d / "kube-apiserver.log",
    )
    env.timings["kube_apiserver_s"] = round(time.monotonic() - started, 2)

    import yaml

    env.kubeconfig.write_text(
        yaml.safe_dump(
            kubeconfig(env.api_url, pki / "ca.crt", cert=pki / "admin.crt", key=pki / "admin.key")
        )
    )
    env.kubeconfig.chmod(0o600)
    env.processes["kube-controller-manager"] = _spawn(
        "kube-controller-manager",
        [
            str(paths["kube-controller-manager"]),
            f"--kubeconfig={env.kubeconfig}",
            f"--authentication-kubeconfig={env.kubeconfig}",
            f"--authorization-kubeconfig={env.kubeconfig}",
            "--controllers=" + ",".join(CONTROLLERS + (NODE_CONTROLLERS if env.node else [])),
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--concurrent-gc-syncs=5",
            "--v=0",
        ],
        d,
    )
    # ServiceAccount "default" appears once the serviceaccount controller runs.
    _wait(
        "kube-controller-manager",
        lambda: _https_ok(
            f"{env.api_url}/api/v1/namespaces/default/serviceaccounts/default", ca_ctx
        ),
        60,
        env.processes["kube-controller-manager"],
        d / "kube-controller-manager.log",
    )
    env.timings["control_plane_s"] = round(time.monotonic() - started, 2)


def _start_node(env: Environment, paths: dict[str, Path], images: dict[str, str]) -> None:
    d = env.directory
    pki = d / "pki"
    started = time.monotonic()
    cfg = node.NodeConfig(
        directory=d,
        api_url=env.api_url,
        ca=pki / "ca.crt",
        cert=pki / "admin.crt",
        key=pki / "admin.key",
        busybox_image=images["busybox_image"],
        sync_frequency=os.environ.get("ITCARE_NODE_SYNC_FREQUENCY", node.DEFAULT_SYNC_FREQUENCY),
        registry=_start_registry(env, paths),
    )
    env.processes["kube-scheduler"] = _spawn(
        "kube-scheduler",
        [
            str(paths["kube-scheduler"]),
            f"--kubeconfig={env.kubeconfig}",
            f"--authentication-kubeconfig={env.kubeconfig}",
            f"--authorization-kubeconfig={env.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--v=0",
        ],
        d,
    )
    (d / "containerd").mkdir(exist_ok=True)
    (d / "containerd" / "config.toml").write_text(node.containerd_config(cfg))
    (d / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    (d / "cni" / "net.d" / "10-itcare.conflist").write_text(json.dumps(node.cni_config(cfg)))
    env.processes["containerd"] = _spawn(
        "containerd", ["containerd", "--config", str(d / "containerd" / "config.toml")], d
    )

    def containerd_up() -> bool:
        if not cfg.sock.exists():
            return False
        out = subprocess.run(
            ["ctr", "--address", str(cfg.sock), "version"], capture_output=True, timeout=10
        )
        return out.returncode == 0

    _wait("containerd", containerd_up, 30, env.processes["containerd"], d / "containerd.log")
    for archive in (images["busybox_archive"], images["operator_archive"]):
        node.import_image(cfg, archive)
    env.timings["node_images_s"] = round(time.monotonic() - started, 2)

    kubelet_dir = d / "kubelet"
    (kubelet_dir / "manifests").mkdir(parents=True, exist_ok=True)
    kubelet_port, kubelet_healthz = free_port(), free_port()
    import yaml

    (kubelet_dir / "config.yaml").write_text(
        yaml.safe_dump(node.kubelet_config(cfg, kubelet_port, kubelet_healthz))
    )
    env.processes["kubelet"] = _spawn(
        "kubelet",
        [
            str(paths["kubelet"]),
            f"--config={kubelet_dir / 'config.yaml'}",
            f"--kubeconfig={env.kubeconfig}",
            f"--hostname-override={node.NODE_NAME}",
            f"--node-ip={node.HOST_FROM_PODS}",
            f"--root-dir={kubelet_dir / 'root'}",
            f"--cert-dir={kubelet_dir / 'pki'}",
            "--v=1",
        ],
        d,
    )
    (d / "kube-proxy.yaml").write_text(
        yaml.safe_dump(node.kube_proxy_config(cfg, env.kubeconfig, free_port(), free_port()))
    )
    env.processes["kube-proxy"] = _spawn(
        "kube-proxy", [str(paths["kube-proxy"]), f"--config={d / 'kube-proxy.yaml'}", "--v=1"], d
    )
    kubectl = [str(paths["kubectl"]), f"--kubeconfig={env.kubeconfig}"]
    subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input=node.local_images_only(cfg.registry),
        text=True,
        check=True,
        capture_output=True,
    )
    node.wait_policy_effective(kubectl)
    node.wait_node_ready(kubectl)
    env.timings["node_s"] = round(time.monotonic() - started, 2)

    front_port = free_port()
    if env.keycloak_url:
        kc_port = env.keycloak_url.split(":")[2].split("/")[0]
        env.processes["tls-front"] = _spawn(
            "tls-front",
            [
                sys.executable,
                "-m",
                "tests.tls_front",
                f"{node.HOST_FROM_PODS}:{front_port}",
                f"127.0.0.1:{kc_port}",
                str(pki / "front.crt"),
                str(pki / "front.key"),
            ],
            d,
            {"PYTHONPATH": str(ROOT)},
        )
    realm_url = f"https://{node.HOST_FROM_PODS}:{front_port}/auth/realms/cloud/"
    repository, _, tag = images["operator_image"].rpartition(":")
    env.node.update(
        {
            "name": node.NODE_NAME,
            "operator_image": images["operator_image"],
            "consumer_image": images["busybox_image"],
            "pod_token_url": f"{realm_url}protocol/openid-connect/token",
            "host_from_pods": node.HOST_FROM_PODS,
            "sync_frequency": cfg.sync_frequency,
            "registry": cfg.registry,
            "ca_file": str(pki / "ca.crt"),
            "helm_args": shlex.join(
                [
                    "--set",
                    f"image.repository={repository}",
                    "--set",
                    f"image.tag={tag}",
                    "--set",
                    "image.pullPolicy=Never",
                    "--set-file",
                    f"tokenEndpointCA.pem={pki / 'ca.crt'}",
                    "--set",
                    f"operator.allowedTokenURLs[0]={realm_url}",
                    "--set",
                    f"operator.volumeDeliverySeconds={node.delivery_bound(cfg.sync_frequency)}",
                ]
            ),
        }
    )


def _start_registry(env: Environment, paths: dict[str, Path]) -> str:
    """A real OCI registry (go-containerregistry's, ``crane registry serve``) on loopback,
    plain HTTP, blobs on disk; the node's containerd trusts it. Returns host:port."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    (env.directory / "registry").mkdir(exist_ok=True)
    env.processes["registry"] = _spawn(
        "registry",
        [
            str(paths["crane"]),
            "registry",
            "serve",
            "--address",
            address,
            "--disk",
            str(env.directory / "registry"),
        ],
        env.directory,
    )
    _wait(
        "registry",
        lambda: _http_ok(f"http://{address}/v2/"),
        30,
        env.processes["registry"],
        env.directory / "registry.log",
    )
    return address


def _state_dir() -> Path | None:
    if STATE_LINK.is_symlink() or STATE_LINK.is_file():
        target = (
            Path(os.readlink(STATE_LINK))
            if STATE_LINK.is_symlink()
            else Path(STATE_LINK.read_text().strip())
        )
        return target if (target / "state.json").exists() else None
    if STATE_LINK.is_dir() and (STATE_LINK / "state.json").exists():
        return STATE_LINK
    return None


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "env"
    with_node = "--node" in argv[1:]
    existing = _state_dir()
    if command == "up":
        if existing and Environment.load(existing).alive():
            if with_node and not Environment.load(existing).node:
                print("the running one has no node: scripts/testenv down", file=sys.stderr)
                return 1
            print(Environment.load(existing).exports())
            return 0
        if existing:
            Environment.load(existing).stop()
        if STATE_LINK.is_symlink():
            STATE_LINK.unlink()
        began = time.monotonic()
        if with_node and (reason := node.unavailable_reason()):
            print(f"# no node: {reason}", file=sys.stderr)
            with_node = False
        env = start(with_node=with_node)
        STATE_LINK.symlink_to(env.directory)
        print(
            f"# environment up in {time.monotonic() - began:.1f}s: {env.timings}", file=sys.stderr
        )
        print(env.exports())
        return 0
    if command == "env":
        if not existing:
            print("no environment is running; run: scripts/testenv up", file=sys.stderr)
            return 1
        print(Environment.load(existing).exports())
        return 0
    if command == "down":
        if existing:
            Environment.load(existing).stop()
        if STATE_LINK.is_symlink():
            STATE_LINK.unlink()
        return 0
    print("usage: python -m tests.environment up|env|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
