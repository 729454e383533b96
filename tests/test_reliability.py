"""Reliability and abuse: faults, outages, restarts, two replicas, floods, bad input.

The promise: as long as the token endpoint answers at some point before a token
expires, the Secret never holds an expired token; a still-valid token is never replaced
by nothing or by garbage; Keycloak is never flooded; nothing leaks. Each scenario
records a row for docs/RELIABILITY.md (``scripts/reliability_report.py``).

Most faults come from the Keycloak-compatible server (``tests/keycloak_fake.py``),
per client, so many scenarios run side by side under one operator.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import math
import os
import re
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import kubernetes
import pytest
import trustme

from itcare_operator.token import parse_time
from tests.environment import Environment
from tests.keycloak_fake import FakeKeycloak, Fault, http_date
from tests.testenv import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    assert_no_leaks,
    condition,
    dump,
    events,
    get_credential,
    make_credential,
    make_source_secret,
    secret_data,
    wait_for,
)

pytestmark = [pytest.mark.env, pytest.mark.e2e, pytest.mark.reliability]

ROOT = Path(__file__).resolve().parent.parent
REPORT = Path(os.environ.get("ITCARE_RELIABILITY_REPORT", ROOT / "build" / "reliability.json"))


@pytest.fixture(scope="module")
def report() -> Iterator[list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    yield rows
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows": {**existing.get("rows", {}), **{r["scenario"]: r for r in rows}},
    }
    REPORT.write_text(json.dumps(doc, indent=2))


def record(
    rows: list[dict[str, Any]],
    scenario: str,
    fault: str,
    expected: str,
    observed: str,
    requests: int,
    gap: float,
) -> None:
    rows.append(
        {
            "scenario": scenario,
            "fault": fault,
            "expected": expected,
            "observed": observed,
            "requests": requests,
            "token_gap_s": round(gap, 2),
        }
    )


class Watcher:
    """Polls target Secrets in the background; records every token seen and any moment a
    Secret was missing or held an expired or unknown token."""

    def __init__(
        self, core: kubernetes.client.CoreV1Api, namespace: str, names: list[str], issued: list[str]
    ) -> None:
        self.core, self.namespace, self.names, self.issued = core, namespace, names, issued
        self.seen: dict[str, list[str]] = {n: [] for n in names}
        self.expired_s: dict[str, float] = dict.fromkeys(names, 0.0)
        self.missing: dict[str, int] = dict.fromkeys(names, 0)
        self.garbage: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        interval = 0.25
        while not self._stop.is_set():
            try:
                listed = self.core.list_namespaced_secret(
                    self.namespace,
                    label_selector="app.kubernetes.io/managed-by=itcare-token-operator",
                    _request_timeout=2,
                )
            except Exception:  # the API server may be restarting: keep watching
                self._stop.wait(interval)
                continue
            secrets = {s.metadata.name: s for s in listed.items}
            now = dt.datetime.now(dt.UTC)
            for name in self.names:
                secret = secrets.get(name)
                if secret is None:
                    if self.seen[name]:
                        self.missing[name] += 1
                    continue
                token = base64.b64decode(secret.data["access_token"]).decode()
                if token not in self.issued:
                    self.garbage.append(name)
                if not self.seen[name] or self.seen[name][-1] != token:
                    self.seen[name].append(token)
                if parse_time(base64.b64decode(secret.data["expires_at"]).decode()) <= now:
                    self.expired_s[name] += interval
            self._stop.wait(interval)


def source_for(
    core: kubernetes.client.CoreV1Api, ns: str, name: str, client_id: str, secret: str
) -> None:
    make_source_secret(core, ns, {"client_id": client_id, "client_secret": secret}, name=name)


def make_fleet(
    kc: FakeKeycloak,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    ns: str,
    n: int,
) -> list[str]:
    """n API accounts (c-i), source Secrets (src-i) and credentials (cred-i -> tok-i)."""
    for i in range(n):
        kc.add_client(f"c-{i}", f"s-{i}-secret")
        source_for(core, ns, f"src-{i}", f"c-{i}", f"s-{i}-secret")
        make_credential(
            custom, ns, kc.token_url, name=f"cred-{i}", source=f"src-{i}", target=f"tok-{i}"
        )
    return [f"tok-{i}" for i in range(n)]


def force(custom: kubernetes.client.CustomObjectsApi, ns: str, name: str, value: str) -> None:
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        name,
        {"metadata": {"annotations": {"itcare.cegedim.cloud/refresh-requested-at": value}}},
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def encoded(needles: list[str], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Each secret as an endpoint's error text or a log could carry it: raw, Base64,
    URL-encoded (either hex case), form-encoded; and each API account as the Base64
    ``id:secret`` of a Basic header (raw and form-encoded, as sent)."""
    forms: list[str] = []
    for needle in needles:
        url = quote(needle, safe="")
        lower = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), url)
        forms += [needle, _b64(needle), url, lower, quote_plus(needle)]
    for client_id, secret in pairs:
        forms += [
            _b64(f"{client_id}:{secret}"),
            _b64(f"{quote_plus(client_id)}:{quote_plus(secret)}"),
        ]
    return list(dict.fromkeys(forms))


def scan(
    op: OperatorProcess,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    ns: str,
    needles: list[str],
    pairs: Sequence[tuple[str, str]] = (),
) -> None:
    """No secret, token or client id in logs, events, status or metrics, in any encoding."""
    haystacks = [op.output(), *(dump(e.to_dict()) for e in events(core, ns))]
    items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    haystacks += [dump(i.get("status")) for i in items]
    if op.proc and op.proc.poll() is None:
        haystacks.append(op.metrics())
    assert_no_leaks(haystacks, encoded(needles, pairs))


FAULTS: list[tuple[str, Fault, str, float]] = [
    # name, fault (hits twice), expected reason, minimum gap between attempts (s)
    ("503-retry-after", Fault(503, headers={"Retry-After": "3"}), "TokenEndpointUnavailable", 2.9),
    ("503", Fault(503, body=b"<html>Service Unavailable</html>"), "TokenEndpointUnavailable", 0.9),
    ("500", Fault(500, body=b'{"error":"unknown_error"}'), "TokenEndpointUnavailable", 0.9),
    ("429-seconds", Fault(429, headers={"Retry-After": "3"}), "RateLimited", 2.9),
    ("429-http-date", Fault(429), "RateLimited", 1.9),  # Retry-After set at injection
    ("reset", Fault(reset=True), "TokenEndpointUnavailable", 0.9),
    ("read-timeout", Fault(200, delay=3.0), "TokenEndpointUnavailable", 0.9),
    (
        "trickle",
        Fault(200, body=b'{"access_token":"x","token_type":"Bearer","expires_in":60}', trickle=0.2),
        "TokenEndpointUnavailable",
        0.9,
    ),
    ("html-200", Fault(200, body=b"<html><body>login</body></html>"), "InvalidTokenResponse", 0.9),
    (
        "truncated-json",
        Fault(200, body=b'{"access_token":"abc","expires_in":6'),
        "InvalidTokenResponse",
        0.9,
    ),
    ("missing-fields", Fault(200, body=b'{"token_type":"Bearer"}'), "InvalidTokenResponse", 0.9),
    (
        "expires-0",
        Fault(200, body=b'{"access_token":"a","token_type":"Bearer","expires_in":0}'),
        "InvalidTokenResponse",
        0.9,
    ),
    (
        "expires-negative",
        Fault(200, body=b'{"access_token":"a","token_type":"Bearer","expires_in":-5}'),
        "InvalidTokenResponse",
        0.9,
    ),
    (
        "expires-string",
        Fault(200, body=b'{"access_token":"a","token_type":"Bearer","expires_in":"60"}'),
        "InvalidTokenResponse",
        0.9,
    ),
    (
        "expires-huge",
        Fault(200, body=b'{"access_token":"a","token_type":"Bearer","expires_in":99999999999}'),
        "InvalidTokenResponse",
        0.9,
    ),
    ("oversized", Fault(200, body=b'{"x":"' + b"y" * 70000 + b'"}'), "InvalidTokenResponse", 0.9),
    # An endpoint that echoes the Authorization header and the body in its error text.
    ("echo", Fault(503, echo=True), "TokenEndpointUnavailable", 0.9),
]


def secret_of(name: str) -> str:
    """The client secret of a fault's API account; characters that URL-, form- and
    Base64-encoding all change, so the leak scan's encodings differ from the raw form."""
    return f"s-{name}-s3cr&t/+= %x"


def start_operator(
    run_operator: Callable[..., OperatorProcess], ns: str, url: str, *extra: str
) -> OperatorProcess:
    prefix = url.rsplit("/protocol/", 1)[0] + "/"
    return run_operator(
        f"--namespace={ns}",
        "--standalone",
        f"--allowed-token-url={prefix}",
        "--token-timeout=2",
        *extra,
    )


def test_fault_matrix(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    """Every fault class hits one credential twice; the old token stays, the reason is
    right, retries are spaced by the backoff (and Retry-After), recovery is at once."""
    ns = namespace
    with FakeKeycloak(access_lifespan=120) as kc:
        for name, *_ in FAULTS:
            kc.add_client(f"c-{name}", secret_of(name))
            source_for(core, ns, f"src-{name}", f"c-{name}", secret_of(name))
            make_credential(
                custom,
                ns,
                kc.token_url,
                name=f"cred-{name}",
                source=f"src-{name}",
                target=f"tok-{name}",
            )
        op = start_operator(run_operator, ns, kc.token_url)
        targets = [f"tok-{name}" for name, *_ in FAULTS]
        wait_for("first tokens", lambda: all(secret_data(core, ns, t) for t in targets), timeout=30)
        with Watcher(core, ns, targets, kc.issued) as watcher:
            forced_at = time.time()
            for name, fault, *_ in FAULTS:
                fault.client_id, fault.times = f"c-{name}", 2
                if name == "429-http-date":
                    fault.headers = {"Retry-After": http_date(3)}
                kc.inject(fault)
                force(custom, ns, f"cred-{name}", "fault-matrix")

            deadline = time.monotonic() + 60
            while pending := [t for t in targets if len(watcher.seen[t]) < 2]:
                assert time.monotonic() < deadline, f"not recovered: {pending}"
                time.sleep(0.5)
        for name, fault, reason, min_gap in FAULTS:
            client = f"c-{name}"
            attempts = sorted(
                r.at for r in kc.requests if r.client_id == client and r.at >= forced_at
            )
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            errors = op.metric(
                "itcare_token_refresh_errors_total",
                namespace=ns,
                name=f"cred-{name}",
                reason=reason,
            )
            target = f"tok-{name}"
            assert fault.hits == 2, name
            assert errors == 2, f"{name}: {errors} errors with reason {reason}"
            assert len(attempts) == 3, f"{name}: {len(attempts)} attempts"
            assert min(gaps) >= min_gap, f"{name}: retried after {min(gaps):.2f}s"
            assert watcher.seen[target][:1] and len(watcher.seen[target]) == 2, name
            assert watcher.missing[target] == 0 and watcher.expired_s[target] == 0
            wait_for(  # the status patch follows the Secret write
                f"{name}: RefreshSucceeded",
                lambda name=name: (
                    condition(get_credential(custom, ns, f"cred-{name}"), "Refreshed").get("reason")
                    == "RefreshSucceeded"
                ),
                timeout=5,
            )
            assert reason in [
                e.reason for e in events(core, ns) if e.involved_object.name == f"cred-{name}"
            ]
            record(
                report,
                f"fault: {name}",
                f"{fault.status if not fault.reset else 'reset'} x2",
                f"old token kept; {reason}; retry >= {min_gap:g}s; recover",
                f"kept; {reason} x2; gaps {', '.join(f'{g:.1f}' for g in gaps)}s; recovered",
                len(attempts),
                0.0,
            )
        assert not watcher.garbage
        needles = (
            [t for t in kc.issued]
            + [secret_of(n) for n, *_ in FAULTS]
            + [f"c-{n}" for n, *_ in FAULTS]
        )
        scan(op, core, custom, ns, needles, [(f"c-{n}", secret_of(n)) for n, *_ in FAULTS])


def test_tls_failure_with_the_wrong_ca(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    with FakeKeycloak(tls=context, host="127.0.0.1") as kc:
        kc.add_client("tls-client", "tls-secret-value")
        source_for(core, namespace, "itcare-api-account", "tls-client", "tls-secret-value")
        url = kc.token_url  # https://localhost:PORT/...
        make_credential(custom, namespace, url)
        run_operator(
            f"--namespace={namespace}",
            "--standalone",
            f"--allowed-token-url={url.rsplit('/protocol/', 1)[0]}/",
        )
        cr = wait_for(
            "TLS failure reported",
            lambda: (
                (c := get_credential(custom, namespace))
                and condition(c, "Refreshed").get("reason") == "TokenEndpointUnavailable"
                and c
            ),
        )
        assert "TLS certificate verification failed" in condition(cr, "Refreshed")["message"]
        assert kc.count(status=None) == 0  # the handshake failed: no request was answered
        record(
            report,
            "fault: TLS wrong CA",
            "untrusted certificate",
            "TokenEndpointUnavailable, no request",
            "TokenEndpointUnavailable: TLS certificate verification failed",
            0,
            0.0,
        )


def test_outage_shorter_than_validity_leaves_no_gap(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    """An outage past the refresh point but ending before expiry: the dense retries near
    expiry catch the first good answer; the Secret never holds an expired token."""
    with FakeKeycloak(access_lifespan=30) as kc:
        kc.add_client("c-outage", "s-outage-secret")
        source_for(core, namespace, "itcare-api-account", "c-outage", "s-outage-secret")
        make_credential(custom, namespace, kc.token_url)
        start_operator(run_operator, namespace, kc.token_url)
        first = wait_for("first token", lambda: secret_data(core, namespace, "itcare-token"))
        expires = parse_time(first["expires_at"])
        outage = Fault(503, client_id="c-outage")
        kc.inject(outage)
        with Watcher(core, namespace, ["itcare-token"], kc.issued) as watcher:
            # the refresh point is at ~15 s; the outage lasts until 6 s before expiry
            time.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds() - 6))
            kc.clear_faults()
            wait_for(
                "refresh before expiry", lambda: len(watcher.seen["itcare-token"]) >= 2, timeout=10
            )
        assert dt.datetime.now(dt.UTC) < expires + dt.timedelta(seconds=1)
        assert watcher.expired_s["itcare-token"] == 0 and watcher.missing["itcare-token"] == 0
        cr = get_credential(custom, namespace)
        assert condition(cr, "Ready")["status"] == "True"
        record(
            report,
            "outage < validity",
            f"503 for ~{30 - 6 - 15}s past the refresh point",
            "no expiry gap",
            f"refreshed after {outage.hits} failed attempts; gap 0s",
            kc.count(status=None),
            0.0,
        )


def test_outage_longer_than_validity(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    """Ready turns False with TokenExpired at expiry, not before; recovery comes within the
    30 s retry cap once the endpoint is back."""
    with FakeKeycloak(access_lifespan=20) as kc:
        kc.add_client("c-long", "s-long-secret")
        source_for(core, namespace, "itcare-api-account", "c-long", "s-long-secret")
        make_credential(custom, namespace, kc.token_url)
        start_operator(run_operator, namespace, kc.token_url)
        first = wait_for("first token", lambda: secret_data(core, namespace, "itcare-token"))
        expires = parse_time(first["expires_at"])
        kc.inject(Fault(503, client_id="c-long"))
        # the status patch follows the Secret write: wait for it before watching Ready
        wait_for(
            "Ready",
            lambda: condition(get_credential(custom, namespace), "Ready").get("status") == "True",
        )

        def ready_false() -> dict[str, Any] | None:
            cr = get_credential(custom, namespace)
            return cr if condition(cr, "Ready").get("reason") == "TokenExpired" else None

        while dt.datetime.now(dt.UTC) < expires - dt.timedelta(seconds=1):
            assert condition(get_credential(custom, namespace), "Ready")["status"] == "True"
            time.sleep(0.5)
        cr = wait_for("TokenExpired", ready_false, timeout=10)
        flipped = parse_time(condition(cr, "Ready")["lastTransitionTime"])
        assert expires <= flipped + dt.timedelta(seconds=1) <= expires + dt.timedelta(seconds=4)
        assert secret_data(core, namespace, "itcare-token") == first  # kept, not emptied
        time.sleep(3)
        kc.clear_faults()
        back = time.monotonic()
        wait_for(
            "recovery",
            lambda: (
                (d := secret_data(core, namespace, "itcare-token"))
                and d["access_token"] != first["access_token"]
            ),
            timeout=40,
        )
        recovery = time.monotonic() - back
        assert recovery <= 32
        gap = (dt.datetime.now(dt.UTC) - expires).total_seconds()
        record(
            report,
            "outage > validity",
            "503 until 3 s after expiry",
            "Ready=False/TokenExpired at expiry; recover within the 30 s retry cap",
            f"flipped {(flipped - expires).total_seconds():+.0f}s from expiry; "
            f"recovered {recovery:.1f}s after the endpoint returned",
            kc.count(status=None),
            gap,
        )


def test_sigterm_drains_and_sigkill_restart_causes_no_storm(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    n = 20
    with FakeKeycloak(access_lifespan=40) as kc:
        targets = make_fleet(kc, core, custom, namespace, n)
        op = start_operator(run_operator, namespace, kc.token_url)
        wait_for(
            "all tokens", lambda: all(secret_data(core, namespace, t) for t in targets), timeout=30
        )
        began = time.monotonic()
        assert op.stop(signal.SIGTERM, timeout=15) == 0
        drain = time.monotonic() - began
        assert drain < 10, f"SIGTERM took {drain:.1f}s"
        with Watcher(core, namespace, targets, kc.issued) as watcher:
            op2 = start_operator(run_operator, namespace, kc.token_url)
            restarted_at = time.time()
            time.sleep(4)
            storm = sum(1 for r in kc.requests if r.at >= restarted_at)
            assert storm == 0, f"{storm} token requests right after a restart with valid tokens"
            # SIGKILL in the middle of the next refresh wave, restart at once
            wait_for(
                "refresh wave begins",
                lambda: sum(len(v) >= 2 for v in watcher.seen.values()) >= 3,
                timeout=40,
            )
            op2.stop(signal.SIGKILL)
            killed_at = time.time()
            start_operator(run_operator, namespace, kc.token_url)
            wait_for(
                "every credential refreshed after the kill",
                lambda: all(len(v) >= 2 for v in watcher.seen.values()),
                timeout=40,
            )
        after_kill = sum(1 for r in kc.requests if r.at >= killed_at)
        assert sum(watcher.expired_s.values()) == 0 and not any(watcher.missing.values())
        total_refreshes = sum(len(v) - 1 for v in watcher.seen.values())
        assert after_kill <= n, f"{after_kill} requests after the kill for {n} credentials"
        record(
            report,
            "operator SIGTERM",
            "SIGTERM",
            "exit 0 promptly",
            f"exit 0 in {drain:.1f}s",
            0,
            0.0,
        )
        record(
            report,
            "operator restart (valid tokens)",
            "SIGTERM + start",
            "0 token requests",
            f"{storm} requests in the 4 s after start",
            storm,
            0.0,
        )
        record(
            report,
            "operator SIGKILL mid-wave",
            "SIGKILL + start",
            "no lost schedule, no storm",
            f"{total_refreshes} refreshes for {n} credentials; "
            f"{after_kill} requests after the kill",
            after_kill,
            0.0,
        )


def test_two_replicas_one_active_and_handover(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    n = 5
    with FakeKeycloak(access_lifespan=40) as kc:
        targets = make_fleet(kc, core, custom, namespace, n)
        prefix = kc.token_url.rsplit("/protocol/", 1)[0] + "/"
        env = {"POD_NAMESPACE": namespace}
        a = run_operator(f"--namespace={namespace}", f"--allowed-token-url={prefix}", extra_env=env)
        wait_for(
            "tokens from the leader", lambda: all(secret_data(core, namespace, t) for t in targets)
        )
        b = run_operator(
            f"--namespace={namespace}", f"--allowed-token-url={prefix}", extra_env=env, wait=False
        )
        time.sleep(3)
        assert "waiting to become leader" in b.output() and "became leader" not in b.output()
        assert kc.count(status=None) == n  # the standby made no request
        with Watcher(core, namespace, targets, kc.issued) as watcher:
            a.stop(signal.SIGKILL)
            killed = time.monotonic()
            wait_for("standby takes over", lambda: "became leader" in b.output(), timeout=30)
            takeover = time.monotonic() - killed
            b.wait_ready()
            wait_for(
                "every credential refreshed by the new leader",
                lambda: all(len(v) >= 2 for v in watcher.seen.values()),
                timeout=40,
            )
        refreshes = sum(len(v) - 1 for v in watcher.seen.values())
        requests = kc.count(status=None) - n
        assert takeover <= 20, f"takeover took {takeover:.1f}s"
        assert requests == refreshes, (
            f"{requests} requests for {refreshes} refreshes: double refresh"
        )
        assert sum(watcher.expired_s.values()) == 0
        # A clean shutdown releases the Lease: a new standby takes over at its next poll.
        c = run_operator(
            f"--namespace={namespace}", f"--allowed-token-url={prefix}", extra_env=env, wait=False
        )
        time.sleep(1)
        b.stop(signal.SIGTERM)
        released = time.monotonic()
        wait_for("handover after SIGTERM", lambda: "became leader" in c.output(), timeout=20)
        clean = time.monotonic() - released
        assert clean <= 5
        record(
            report,
            "two replicas: leader SIGKILL",
            "SIGKILL of the active replica",
            "standby takes over, no double refresh",
            f"takeover {takeover:.1f}s; {requests} requests for {refreshes} refreshes",
            requests,
            0.0,
        )
        record(
            report,
            "two replicas: leader SIGTERM",
            "SIGTERM of the active replica",
            "Lease released, fast handover",
            f"takeover {clean:.1f}s",
            0,
            0.0,
        )


def test_flood_of_credentials_respects_the_caps(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    n, cap, rate = 200, 4, 40.0
    with FakeKeycloak(access_lifespan=600) as kc:
        kc.add_client("shared", "shared-secret-value")
        make_source_secret(
            core, namespace, {"client_id": "shared", "client_secret": "shared-secret-value"}
        )
        start_operator(
            run_operator,
            namespace,
            kc.token_url,
            f"--max-concurrent-requests={cap}",
            f"--requests-per-second={rate:g}",
        )
        created = time.monotonic()
        for i in range(n):
            make_credential(custom, namespace, kc.token_url, name=f"cred-{i}", target=f"tok-{i}")
        wait_for(
            "all Secrets",
            lambda: (
                len(
                    core.list_namespaced_secret(
                        namespace,
                        label_selector="app.kubernetes.io/managed-by=itcare-token-operator",
                    ).items
                )
                == n
            ),
            timeout=120,
        )
        elapsed = time.monotonic() - created
        starts = sorted(kc.started)
        busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
        assert kc.peak_in_flight <= cap, f"{kc.peak_in_flight} requests in flight"
        # The bucket allows its burst (= rate) plus one second of refill in any second at the
        # client (tests/test_token_endpoint.py checks that bound exactly, at the transport).
        # These are arrival times at the server: between the bucket and the socket the
        # request waits for the event loop (busy with 200 credentials) and the server's
        # thread pool, which can bunch arrivals; CI saw 83 in one second. Allow 150 ms of
        # that jitter here, and check the sustained rate as well: n requests after a
        # burst of `rate` cannot span less than (n - rate) / rate seconds.
        jitter = 0.15
        assert busiest <= rate + rate + math.ceil(rate * jitter), f"{busiest} in one second"
        span = starts[-1] - starts[0]
        assert span >= (n - rate) / rate - jitter, f"{n} requests in {span:.2f}s"
        assert kc.count() == n
        record(
            report,
            f"flood: {n} credentials at once",
            "mass creation",
            f"<= {cap} in flight, <= {rate:g}/s (+burst)",
            f"peak {kc.peak_in_flight} in flight, busiest second {busiest}, "
            f"{n} requests over {span:.1f}s; all ready in {elapsed:.1f}s",
            kc.count(),
            0.0,
        )


def test_abuse_cross_namespace_and_shared_target(
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    other = f"{namespace}-b"
    core.create_namespace({"metadata": {"name": other}})
    try:
        with FakeKeycloak(access_lifespan=600) as kc:
            kc.add_client("c-b", "s-b-secret")
            make_source_secret(core, other, {"client_id": "c-b", "client_secret": "s-b-secret"})
            # A credential in A naming a Secret "in B": the field does not exist; the API
            # server prunes it, and the operator looks in A only.
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ITCareCredential",
                "metadata": {"name": "steal"},
                "spec": {
                    "clientSecretRef": {"name": "itcare-api-account", "namespace": other},
                    "tokenURL": kc.token_url,
                    "targetSecret": {"name": "stolen"},
                },
            }
            created = custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body
            )
            assert "namespace" not in created["spec"]["clientSecretRef"]
            # Two credentials with one target: the second never takes it over.
            kc.add_client("c-a", "s-a-secret")
            make_source_secret(
                core, namespace, {"client_id": "c-a", "client_secret": "s-a-secret"}, name="acct-a"
            )
            make_credential(
                custom, namespace, kc.token_url, name="first", source="acct-a", target="shared"
            )
            start_operator(run_operator, namespace, kc.token_url)
            wait_for("first owns the target", lambda: secret_data(core, namespace, "shared"))
            make_credential(
                custom, namespace, kc.token_url, name="second", source="acct-a", target="shared"
            )
            wait_for(
                "cross-namespace read refused",
                lambda: (
                    condition(get_credential(custom, namespace, "steal"), "Refreshed").get("reason")
                    == "SourceSecretNotFound"
                ),
            )
            wait_for(
                "second gets a conflict",
                lambda: (
                    condition(get_credential(custom, namespace, "second"), "Refreshed").get(
                        "reason"
                    )
                    == "TargetSecretConflict"
                ),
            )
            assert kc.count("c-b", status=None) == 0
            owner = core.read_namespaced_secret("shared", namespace).metadata.owner_references[0]
            assert owner.name == "first"
        record(
            report,
            "abuse: Secret in another namespace",
            "clientSecretRef.namespace",
            "impossible: field pruned, own namespace only",
            "pruned; SourceSecretNotFound; 0 requests",
            0,
            0.0,
        )
        record(
            report,
            "abuse: two credentials, one target",
            "same targetSecret.name",
            "second gets TargetSecretConflict",
            "TargetSecretConflict; first keeps it",
            1,
            0.0,
        )
    finally:
        core.delete_namespace(other)


def test_api_server_restart(
    testenv: Environment,
    namespace: str,
    core: kubernetes.client.CoreV1Api,
    custom: kubernetes.client.CustomObjectsApi,
    run_operator: Callable[..., OperatorProcess],
    report: list[dict[str, Any]],
) -> None:
    """kube-apiserver restarts under a running operator: watches reconnect, no scheduled
    refresh is lost, none is doubled."""
    n = 5
    with FakeKeycloak(access_lifespan=30) as kc:
        targets = make_fleet(kc, core, custom, namespace, n)
        op = start_operator(run_operator, namespace, kc.token_url)
        wait_for(
            "all tokens", lambda: all(secret_data(core, namespace, t) for t in targets), timeout=30
        )
        with Watcher(core, namespace, targets, kc.issued) as watcher:
            time.sleep(2)
            began = time.monotonic()
            testenv.restart("kube-apiserver")
            deadline = time.monotonic() + 60
            while True:
                try:
                    core.list_namespace(_request_timeout=2)
                    break
                except Exception:
                    assert time.monotonic() < deadline, "API server did not come back"
                    time.sleep(0.5)
            down = time.monotonic() - began
            wait_for(
                "refreshes continue after the restart",
                lambda: all(len(v) >= 3 for v in watcher.seen.values()),
                timeout=60,
            )
            # drift repair proves the Secret watch reconnected
            core.delete_namespaced_secret("tok-0", namespace)
            wait_for(
                "drift repaired after reconnect",
                lambda: secret_data(core, namespace, "tok-0"),
                timeout=15,
            )
        refreshes = sum(len(v) - 1 for v in watcher.seen.values())
        requests = kc.count(status=None) - n
        assert requests == refreshes, f"{requests} requests for {refreshes} refreshes"
        assert op.proc is not None and op.proc.poll() is None
        record(
            report,
            "kube-apiserver restart",
            f"API server down ~{down:.0f}s",
            "watches reconnect; no lost or doubled refresh",
            f"{refreshes} refreshes, {requests} requests; drift repaired after reconnect",
            requests,
            sum(watcher.expired_s.values()),
        )
