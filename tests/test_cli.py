"""``itcare-operator`` as a user runs it: a subprocess, exit codes, output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from itcare_operator.cli import main
from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.keycloak_fake import FakeKeycloak, Fault


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ITCARE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "itcare_operator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def creds_env() -> dict[str, str]:
    return {"ITCARE_CLIENT_ID": CLIENT_ID, "ITCARE_CLIENT_SECRET": CLIENT_SECRET}


def assert_no_secrets(proc: subprocess.CompletedProcess[str], server: FakeKeycloak) -> None:
    for secret in (CLIENT_ID, CLIENT_SECRET, *server.issued):
        assert secret not in proc.stdout + proc.stderr


def test_version() -> None:
    proc = cli("version")
    assert proc.returncode == 0 and proc.stdout.startswith("itcare-token-operator 0.")


def test_help_lists_commands() -> None:
    proc = cli("token", "--help")
    assert proc.returncode == 0 and "--from-secret" in proc.stdout and "Exit codes" in proc.stdout


def test_token_text(keycloak: FakeKeycloak) -> None:
    proc = cli("token", "--token-url", keycloak.token_url, env=creds_env())
    assert proc.returncode == 0, proc.stderr
    assert "expires at:" in proc.stdout and "fingerprint:   sha256:" in proc.stdout
    assert_no_secrets(proc, keycloak)
    assert keycloak.count("client_credentials") == 1


def test_token_json_and_print_token(keycloak: FakeKeycloak) -> None:
    proc = cli(
        "token",
        "--token-url",
        keycloak.token_url,
        "--output",
        "json",
        "--print-token",
        env=creds_env(),
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["accessToken"] in keycloak.issued
    assert 1190 <= doc["expiresInSeconds"] <= 1200 and doc["tokenType"] == "Bearer"


def test_token_from_files(keycloak: FakeKeycloak, tmp_path: Path) -> None:
    (tmp_path / "id").write_text(CLIENT_ID + "\n")
    (tmp_path / "secret").write_text(CLIENT_SECRET + "\n")
    proc = cli(
        "token",
        "--token-url",
        keycloak.token_url,
        "--client-id-file",
        str(tmp_path / "id"),
        "--client-secret-file",
        str(tmp_path / "secret"),
    )
    assert proc.returncode == 0, proc.stderr


def test_token_over_tls_with_ca_bundle(keycloak_tls: FakeKeycloak, ca_bundle: Path) -> None:
    proc = cli(
        "token",
        "--token-url",
        keycloak_tls.token_url,
        "--ca-bundle",
        str(ca_bundle),
        env=creds_env(),
    )
    assert proc.returncode == 0, proc.stderr
    proc = cli("token", "--token-url", keycloak_tls.token_url, env=creds_env())
    assert proc.returncode == 4 and "TLS certificate verification failed" in proc.stderr


@pytest.mark.parametrize(
    ("setup", "code", "reason"),
    [
        (lambda kc: kc.clients[CLIENT_ID].__setattr__("secret", "other"), 3, "UnauthorizedClient"),
        (lambda kc: kc.clients[CLIENT_ID].__setattr__("enabled", False), 3, "InvalidClient"),
        (lambda kc: kc.inject(Fault(503)), 4, "TokenEndpointUnavailable"),
        (lambda kc: kc.inject(Fault(429, headers={"Retry-After": "3"})), 4, "RateLimited"),
        (lambda kc: kc.inject(Fault(200, body=b"<html>")), 5, "InvalidTokenResponse"),
    ],
    ids=["wrong-secret", "disabled", "503", "429", "garbage"],
)
def test_token_exit_codes(keycloak: FakeKeycloak, setup: object, code: int, reason: str) -> None:
    setup(keycloak)  # type: ignore[operator]
    proc = cli("token", "--token-url", keycloak.token_url, env=creds_env())
    assert proc.returncode == code, proc.stderr
    assert reason in proc.stderr
    assert_no_secrets(proc, keycloak)


def test_token_unreachable() -> None:
    proc = cli("token", "--token-url", "http://127.0.0.1:1/token", env=creds_env())
    assert proc.returncode == 4 and "unreachable" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("token",),  # no credentials
        ("token", "--client-id-file", "/nonexistent"),
        ("token", "--from-secret", "just-a-name"),
        ("token", "--token-url", "ftp://x/token"),
        ("run", "--metrics-port", "99999"),
        ("run", "--log-format", "xml"),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error" in proc.stderr


def test_bad_env_flag_is_usage_error() -> None:
    proc = cli("run", env={"ITCARE_OPERATOR_METRICS_PORT": "many"})
    assert proc.returncode == 2 and "ITCARE_OPERATOR_METRICS_PORT" in proc.stderr


def test_from_secret_without_kubeconfig_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli(
        "token",
        "--from-secret",
        "team-a/api-account",
        env={"KUBECONFIG": str(tmp_path / "absent"), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2, proc.stderr
    assert "no usable kubeconfig" in proc.stderr and "Traceback" not in proc.stderr


def test_from_secret_with_unreachable_api_server_is_a_usage_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    proc = cli("token", "--from-secret", "team-a/api-account", env={"KUBECONFIG": str(kubeconfig)})
    assert proc.returncode == 2, proc.stderr
    assert "API server https://127.0.0.1:9 unreachable" in proc.stderr  # names the server
    assert "Traceback" not in proc.stderr


def test_cluster_credentials_need_cluster_wide_mode() -> None:
    proc = cli("run", "--cluster-credentials", "--namespace", "team-a")
    assert proc.returncode == 2 and "cluster-wide mode" in proc.stderr


def two_context_kubeconfig(path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "clusters: [{name: a, cluster: {server: 'https://127.0.0.1:9'}},"
        " {name: b, cluster: {server: 'https://127.0.0.1:10'}}]\n"
        "users: [{name: u, user: {token: x}}]\n"
        "contexts: [{name: a, context: {cluster: a, user: u}},"
        " {name: b, context: {cluster: b, user: u}}]\n"
    )
    return path


def test_token_url_without_a_host_is_a_usage_error() -> None:
    proc = cli("token", "--token-url", "http://", env=creds_env())
    assert proc.returncode == 2, proc.stderr
    assert "--token-url has no host" in proc.stderr


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every name lookup and socket connection of this process is recorded and refused:
    a test proves that its refusal came before any request, and nothing leaves the
    machine even when the code under test does try."""
    attempts: list[object] = []

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        attempts.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "blocked by the test")

    def connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise ConnectionRefusedError("blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("HTTP://192.0.2.1/token", "--insecure-http"),  # TEST-NET-1, never routed
        ("Http://192.0.2.1/token", "--insecure-http"),
        ("hTtP://token.example.invalid/token", "--insecure-http"),
        ("HTTP://[2001:db8::1]/token", "--insecure-http"),
        (" http://192.0.2.1/token", "whitespace"),
        ("ftp://192.0.2.1/token", "https"),
        ("ws://192.0.2.1/token", "https"),
        ("file:///etc/passwd", "https"),
    ],
)
def test_token_url_scheme_is_judged_parsed_before_any_request(
    no_connections: list[object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    message: str,
) -> None:
    for name, value in creds_env().items():
        monkeypatch.setenv(name, value)
    code = main(["token", "--token-url", url])
    err = capsys.readouterr().err
    assert no_connections == [], f"a request was attempted before the refusal: {err}"
    assert code == 2 and message in err, err
    assert CLIENT_ID not in err and CLIENT_SECRET not in err


def test_an_upper_case_http_scheme_to_loopback_still_works(keycloak: FakeKeycloak) -> None:
    url = keycloak.token_url
    assert url.startswith("http://127.0.0.1:")
    proc = cli("token", "--token-url", "HTTP" + url[4:], env=creds_env())
    assert proc.returncode == 0, proc.stderr
    assert_no_secrets(proc, keycloak)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--metrics-port", "abc"),
        ("--health-port", "-1"),
        ("--max-concurrent-requests", "many"),
        ("--requests-per-second", "fast"),
        ("--token-timeout", "0"),
    ],
)
def test_bad_flag_value_names_the_flag_not_internals(flag: str, value: str) -> None:
    proc = cli("run", flag, value)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"argument {flag}: '{value}' is not a" in last, last
    assert "_port" not in proc.stderr and "_positive" not in proc.stderr


def test_connection_refused_names_the_address() -> None:
    proc = cli("token", "--token-url", "http://127.0.0.1:1/token", env=creds_env())
    assert proc.returncode == 4, proc.stderr
    assert "connection to 127.0.0.1:1 refused" in proc.stderr


def test_tls_failure_names_the_address(keycloak_tls: FakeKeycloak) -> None:
    url = keycloak_tls.token_url
    proc = cli("token", "--token-url", url, env=creds_env())
    host, port = url.split("/")[2].rsplit(":", 1)
    assert proc.returncode == 4 and f"verification failed for {host}:{port}:" in proc.stderr


def test_run_without_a_kubeconfig_is_one_line(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "absent"), "HOME": str(tmp_path)}
    proc = cli("run", "--standalone", env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("itcare-operator: error: no usable kubeconfig")


def test_run_with_an_unknown_context_is_one_line(tmp_path: Path) -> None:
    kubeconfig = two_context_kubeconfig(tmp_path / "kubeconfig")
    proc = cli("run", "--standalone", "--kubeconfig", str(kubeconfig), "--context", "nope")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


def test_from_secret_uses_the_kubeconfig_and_context_flags(tmp_path: Path) -> None:
    kubeconfig = two_context_kubeconfig(tmp_path / "kubeconfig")
    env = {"KUBECONFIG": str(tmp_path / "absent"), "HOME": str(tmp_path)}
    args = ("token", "--from-secret", "team-a/api-account", "--kubeconfig", str(kubeconfig))
    proc = cli(*args, "--context", "b", env=env)
    # Context b's server (port 10) is down: the flags were used, the absent KUBECONFIG not.
    assert proc.returncode == 2 and "https://127.0.0.1:10 unreachable" in proc.stderr, proc.stderr
    proc = cli(*args, "--context", "nope", env=env)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_load_config_honours_kubeconfig_and_context(tmp_path: Path) -> None:
    from itcare_operator.kube_api import load_config

    kubeconfig = str(two_context_kubeconfig(tmp_path / "kubeconfig"))
    assert load_config(kubeconfig).host == "https://127.0.0.1:9"
    assert load_config(kubeconfig, "b").host == "https://127.0.0.1:10"


def test_settings_take_kubeconfig_and_context_from_flags_or_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from itcare_operator.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["run", "--kubeconfig", "/k", "--context", "c"])
    settings = settings_from_args(args)
    assert (settings.kubeconfig, settings.context) == ("/k", "c")
    monkeypatch.setenv("ITCARE_OPERATOR_KUBECONFIG", "/env")
    monkeypatch.setenv("ITCARE_OPERATOR_CONTEXT", "e")
    settings = settings_from_args(build_parser().parse_args(["run"]))
    assert (settings.kubeconfig, settings.context) == ("/env", "e")


def test_a_kubeconfig_that_is_not_yaml_is_one_line_without_its_text(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: u\n  user: {token: sekrit-token-value\n")
    for args in (("run", "--standalone"), ("token", "--from-secret", "a/b")):
        proc = cli(*args, "--kubeconfig", str(kubeconfig))
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "not valid YAML at line" in proc.stderr and "sekrit" not in proc.stderr


def test_a_missing_kubeconfig_file_is_named(tmp_path: Path) -> None:
    proc = cli("run", "--kubeconfig", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and f"--kubeconfig {tmp_path / 'nope.yaml'}: no such file" in (
        proc.stderr
    )


def test_kopf_logs_in_with_the_kubeconfig_and_context_flags(tmp_path: Path) -> None:
    from itcare_operator.handlers import connection_info
    from itcare_operator.settings import Settings

    kubeconfig = str(two_context_kubeconfig(tmp_path / "kubeconfig"))
    info = connection_info(Settings(kubeconfig=kubeconfig, context="b"))
    assert (info.server, info.scheme, info.token) == ("https://127.0.0.1:10", "Bearer", "x")
