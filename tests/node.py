"""A real node beside the test control plane: containerd + runc + kubelet + kube-proxy.

Pods live in network namespaces on a bridge of the node's own (``itcare0``,
10.244.0.0/24). The host is 10.244.0.1 on that bridge: the API server advertises that
address (pods reach it through the ``kubernetes`` Service, which kube-proxy maps), and
a TLS front for Keycloak listens there. Nothing is masqueraded and IP forwarding is
left as the machine has it, so no pod packet is routed out of the machine.

Images come from ``scripts/build-components node|operator-image`` (no registry): a
busybox image that is both the pod sandbox and the token consumer, and the operator
image built from the repository's Dockerfile. Facts behind the settings are in the
project's node field notes (``restrict_oom_score_adj``, cgroupfs on cgroup v1, ...).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

NODE_NAME = "itcare-node"
BRIDGE = "itcare0"
POD_CIDR = "10.244.0.0/24"
HOST_FROM_PODS = "10.244.0.1"
# The kubelet's own default; tests may shorten it (ITCARE_NODE_SYNC_FREQUENCY) to run faster.
DEFAULT_SYNC_FREQUENCY = "1m"

ROOT = Path(__file__).resolve().parent.parent


# No pod may name an image from a registry outside the machine: pulling one would reach
# out (the chart's default image, in the tests that install the chart without running
# it). Allowed: images built here (localhost/...) and the test registry on loopback.
def local_images_only(registry: str = "") -> str:
    """The ValidatingAdmissionPolicy (and its binding) that refuses any other image."""
    prefixes = ["localhost/", *([f"{registry}/"] if registry else [])]
    allowed = " || ".join(f"c.image.startsWith('{p}')" for p in prefixes)
    where = " or from the test registry " + f"({registry}/...)" if registry else ""
    return f"""
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: itcare-test-local-images-only
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["pods"]
  validations:
    - expression: >-
        object.spec.containers.all(c, {allowed}) &&
        (!has(object.spec.initContainers) ||
         object.spec.initContainers.all(c, {allowed}))
      message: the test node runs only images built on this machine (localhost/...){where}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: itcare-test-local-images-only
spec:
  policyName: itcare-test-local-images-only
  validationActions: [Deny]
"""


LOCAL_IMAGES_ONLY = local_images_only()


def delivery_bound(sync_frequency: str) -> int:
    """The operator's ``--volume-delivery-seconds`` for a kubelet with this
    ``syncFrequency``: the kubelet rewrites Secret volumes on its periodic pod sync, whose
    period is jittered by up to half of it, so a write waits up to 1.5 periods (measured:
    83 s at 1m, 14.6 s at 10s); twice the period plus 5 s leaves a margin."""
    seconds = _duration(sync_frequency)
    return int(2 * seconds + 5)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


def unavailable_reason() -> str | None:
    """Why a node cannot run on this machine, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the node tier needs root (containerd, runc, network namespaces, iptables)"
    if not Path("/proc/sys/net/bridge").exists() and not _modprobe("bridge"):
        return "the kernel has no bridge support (needed for the pod network)"
    for cgroup in ("cpu", "memory", "pids"):
        if (
            not Path(f"/sys/fs/cgroup/{cgroup}").exists()
            and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
        ):
            return f"the kernel exposes no {cgroup} cgroup controller"
    return None


def _modprobe(module: str) -> bool:
    """Load a module where modprobe exists (built-in features need none)."""
    if shutil.which("modprobe") is None:
        return False
    return subprocess.run(["modprobe", module], capture_output=True).returncode == 0


def run(*argv: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def build_images() -> dict[str, str]:
    """Build (or find in the cache) the images; returns archive paths and references."""
    script = str(ROOT / "scripts" / "build-components")
    subprocess.run([script, "node"], check=True)
    out = subprocess.run([script, "operator-image"], check=True, capture_output=True, text=True)
    archive, ref = out.stdout.split()[-2:]
    versions = _versions()
    images = cache_dir() / f"images-{versions['NODE_IMAGES_VERSION']}"
    return {
        "operator_archive": archive,
        "operator_image": ref,
        "busybox_archive": str(images / "busybox.oci.tar"),
        "busybox_image": versions["BUSYBOX_IMAGE"],
    }


def cache_dir() -> Path:
    return Path(os.environ.get("ITCARE_CACHE", Path.home() / ".cache" / "itcare-operator"))


def _versions() -> dict[str, str]:
    out = {}
    for line in (ROOT / "scripts" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def ensure_bridge() -> None:
    """The pod bridge with the host's address on it; the API server binds to it."""
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
    addrs = run("ip", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f"{HOST_FROM_PODS}/" not in addrs:
        run("ip", "addr", "add", f"{HOST_FROM_PODS}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # Without it, traffic between two pods on the bridge skips kube-proxy's rules
    # (a Service whose endpoint is a pod on the same bridge).
    _modprobe("br_netfilter")
    with contextlib.suppress(OSError):
        Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1\n")


@dataclasses.dataclass
class NodeConfig:
    directory: Path
    api_url: str  # as the kubelet and kube-proxy reach it
    ca: Path
    cert: Path
    key: Path
    busybox_image: str
    sync_frequency: str = DEFAULT_SYNC_FREQUENCY
    registry: str = ""
    """host:port of the test registry (plain HTTP on loopback) containerd pulls from."""

    @property
    def sock(self) -> Path:
        return self.directory / "containerd" / "containerd.sock"


def containerd_config(cfg: NodeConfig) -> str:
    d = cfg.directory / "containerd"
    return f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
[grpc]
  address = "{cfg.sock}"
[ttrpc]
  address = "{cfg.sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{cfg.busybox_image}"
  # Root cannot lower oom_score_adj on these machines; the CRI asks -998 for sandboxes.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cfg.directory / "cni" / "net.d"}"
{_registry_config(cfg.registry)}"""


def _registry_config(registry: str) -> str:
    """containerd trusts the test registry, which speaks plain HTTP on loopback."""
    if not registry:
        return ""
    return f"""  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"""


def cni_config(cfg: NodeConfig) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "itcare-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # No masquerade: a pod's packet never leaves the machine looking like ours.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(cfg.directory / "cni" / "ipam"),
                    "ranges": [[{"subnet": POD_CIDR, "rangeStart": "10.244.0.10"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(cfg: NodeConfig, port: int, healthz_port: int) -> dict[str, Any]:
    d = cfg.directory / "kubelet"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": HOST_FROM_PODS,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{cfg.sock}",
        "staticPodPath": str(d / "manifests"),
        "podLogsDir": str(d / "pod-logs"),
        "resolvConf": "",
        "enforceNodeAllocatable": [],
        "cgroupsPerQOS": True,
        "syncFrequency": cfg.sync_frequency,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%"},
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(cfg.ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "registerNode": True,
        "maxPods": 60,
    }


def kube_proxy_config(cfg: NodeConfig, kubeconfig: Path, metrics: int, healthz: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "metricsBindAddress": f"127.0.0.1:{metrics}",
        "healthzBindAddress": f"127.0.0.1:{healthz}",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        # The machine's conntrack table size is not ours to change.
        "conntrack": {"maxPerCore": 0, "min": 0},
        "nodePortAddresses": [f"{HOST_FROM_PODS}/32"],
    }


def import_image(cfg: NodeConfig, archive: str) -> None:
    run("ctr", "--address", str(cfg.sock), "-n", "k8s.io", "images", "import", archive)


def stop_containers(sock: Path) -> None:
    """Kill every container of this node's containerd (its shims outlive containerd)."""
    if not sock.exists():
        return
    ctr = ["ctr", "--address", str(sock), "-n", "k8s.io"]
    tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, timeout=30)
    for task in tasks.stdout.split():
        subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)


def kill_shims(sock: Path) -> None:
    """containerd-shim processes started for ``sock`` (they daemonize away from us)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"containerd-shim" in cmdline[0] and str(sock).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def unmount_under(directory: Path) -> None:
    """Unmount what the kubelet and containerd mounted below ``directory`` (deepest first)."""
    prefix = str(directory.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def cleanup_network() -> None:
    """Remove the bridge and kube-proxy's rules (the only host state the node changes)."""
    run("ip", "link", "delete", BRIDGE, check=False)


def wait_policy_effective(kubectl: list[str], timeout: float = 30) -> None:
    """Until the API server enforces LOCAL_IMAGES_ONLY (policies load asynchronously)."""
    probe = [*kubectl, "run", "policy-probe", "--image=registry.invalid/probe:1"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*probe, "--dry-run=server"], capture_output=True, text=True)
        if out.returncode != 0 and "itcare-test-local-images-only" in out.stderr:
            return
        time.sleep(0.5)
    raise RuntimeError("the local-images-only admission policy is not enforced")


def wait_node_ready(kubectl: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = subprocess.run(
            [*kubectl, "get", "node", NODE_NAME, "-o", "json"], capture_output=True, text=True
        )
        if out.returncode == 0:
            node = json.loads(out.stdout)
            for cond in node.get("status", {}).get("conditions", []):
                if cond["type"] == "Ready":
                    last = f"{cond['status']}: {cond.get('message', '')}"
                    if cond["status"] == "True":
                        return
        time.sleep(1)
    raise RuntimeError(f"node {NODE_NAME} not Ready after {timeout:.0f}s; last: {last}")


def remove_tree(directory: Path) -> None:
    unmount_under(directory)
    shutil.rmtree(directory, ignore_errors=True)


# -- application pods and what they read -------------------------------------------------

# Consumer pods: read the token file every second, print when, which token (its
# fingerprint, never the token) and its expiry.
CONSUMER_SCRIPT = (
    "while true; do "
    'echo "$(date +%s) fp=$(sha256sum /var/run/itcare/access_token | cut -c1-12) '
    'exp=$(cat /var/run/itcare/expires_at)"; '
    "sleep 1; done"
)
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def fingerprint(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()[:12]


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def consumer(image: str, name: str, *, sub_path: bool = False) -> dict[str, Any]:
    """A Deployment that reads the token as users are told to (a Secret volume), or
    through the ``subPath`` mount the docs warn about."""
    mount: dict[str, Any] = {"name": "token", "mountPath": "/var/run/itcare", "readOnly": True}
    mounts = [mount]
    if sub_path:
        mounts = [
            {**mount, "mountPath": f"/var/run/itcare/{key}", "subPath": key}
            for key in ("access_token", "expires_at")
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "consumer",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", CONSUMER_SCRIPT],
                            "volumeMounts": mounts,
                            "securityContext": RESTRICTED_CONTAINER,
                        }
                    ],
                    "volumes": [{"name": "token", "secret": {"secretName": "itcare-token"}}],
                },
            },
        },
    }


def secret_token(core: kubernetes.client.CoreV1Api, namespace: str) -> tuple[str, float] | None:
    try:
        data = core.read_namespaced_secret("itcare-token", namespace).data or {}
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    if "access_token" not in data:
        return None
    return (
        fingerprint(base64.b64decode(data["access_token"])),
        parse_time(base64.b64decode(data["expires_at"]).decode()),
    )


class SecretWatcher:
    """Polls the target Secret from the host (5 times a second): when each token was
    written, and whether an expired token was ever there. It sees only what is written
    while it runs: a writer that may still write (an operator pod, even terminating)
    must be gone, and :meth:`sync` called, before ``writes[-1]`` is the last token."""

    def __init__(self, core: kubernetes.client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.writes: list[tuple[float, str, float]] = []  # (seen at, fingerprint, expiry)
        self.expired_seen: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._polled = threading.Condition()
        self._polls = 0  # polls completed

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiException, OSError):
                now = time.time()
                current = secret_token(self.core, self.namespace)
                if current is not None:
                    fp, expiry = current
                    if not self.writes or self.writes[-1][1] != fp:
                        self.writes.append((now, fp, expiry))
                    if expiry <= now:
                        self.expired_seen.append((now, expiry))
                with self._polled:  # a poll that failed read nothing: not counted
                    self._polls += 1
                    self._polled.notify_all()
            self._stop.wait(0.2)

    def sync(self, timeout: float = 30) -> None:
        """Return once a poll that began after this call has read the Secret: every
        write made before the call is then in ``writes``."""
        with self._polled:
            target = self._polls + 2  # the poll under way may have read before the call
            if not self._polled.wait_for(lambda: self._polls >= target, timeout):
                raise AssertionError(f"the Secret watcher made no poll in {timeout:.0f}s")

    def __enter__(self) -> SecretWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def consumer_reads(
    kubectl: Callable[..., subprocess.CompletedProcess[str]], namespace: str, deployment: str
) -> list[tuple[int, str, float]]:
    proc = kubectl("-n", namespace, "logs", f"deployment/{deployment}", "--tail=-1", check=False)
    out = proc.stdout if proc.returncode == 0 else ""  # not started yet
    reads = []
    for line in out.splitlines():
        parts = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
        if "fp" in parts and parts.get("exp"):
            reads.append((int(line.split()[0]), parts["fp"], parse_time(parts["exp"])))
    return reads


def delivery_delays(
    writes: list[tuple[float, str, float]], reads: list[tuple[int, str, float]]
) -> list[float]:
    """Seconds from each Secret write to the first read of that token *or a newer one*
    (a kubelet that syncs less often than tokens change skips some), for the writes
    after the consumer's first read. ``date +%s`` truncates: a read at ``t`` happened
    within the second after it."""
    if not reads:
        return []
    first_read = reads[0][0]
    delays = []
    for index, (seen, _, _) in enumerate(writes):
        if seen <= first_read + 1:
            continue
        newer = {fp for _, fp, _ in writes[index:]}
        got = [t for t, fp, _ in reads if fp in newer and t + 1 >= seen]
        if got:
            delays.append(max(0.0, min(got) + 0.5 - seen))
    return delays
