"""``kubectl itcare``: status, renew and check with a fake credential store (unit tier)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from itcare_operator import __version__
from itcare_operator.cli import UsageError
from itcare_operator.kubectl_plugin import (
    EXIT_CODES,
    REFRESH_ANNOTATION,
    CredentialRef,
    build_parser,
    explain,
    main,
    parse_ref,
)
from itcare_operator.troubleshooting import REASONS
from tests.conftest import CLIENT_ID, CLIENT_SECRET
from tests.keycloak_fake import FakeKeycloak

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 11, 28, 10, 0, 0, tzinfo=dt.UTC)


class FakeStore:
    server = "https://api.example:6443"

    def __init__(self, objects: dict[CredentialRef, dict[str, Any]]) -> None:
        self.objects = objects
        self.annotated: list[tuple[CredentialRef, dict[str, str]]] = []
        self.listed: list[tuple[str | None, str | None, bool]] = []

    def get(self, ref: CredentialRef) -> dict[str, Any] | None:
        return self.objects.get(ref)

    def list(
        self, namespace: str | None, selector: str | None, *, cluster: bool
    ) -> list[dict[str, Any]]:
        self.listed.append((namespace, selector, cluster))
        wanted = dict(p.split("=") for p in selector.split(",")) if selector else {}
        return [
            obj
            for ref, obj in self.objects.items()
            if (ref.namespace is None) == cluster
            and (cluster or namespace is None or ref.namespace == namespace)
            and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
        ]

    def annotate(self, ref: CredentialRef, annotations: Mapping[str, str]) -> None:
        self.annotated.append((ref, dict(annotations)))


def failing_credential(reason: str = "TokenEndpointUnavailable") -> dict[str, Any]:
    return {
        "metadata": {"name": "billing", "namespace": "team-a", "generation": 2},
        "spec": {"targetSecret": {"name": "itcare-token"}},
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "TokenValid", "message": "ok"},
                {
                    "type": "Refreshed",
                    "status": "False",
                    "reason": reason,
                    "message": "token endpoint unreachable: connection to kc:443 refused",
                },
            ],
            "tokenExpiresAt": "2026-11-28T10:12:00Z",
            "lastRefreshTime": "2026-11-28T09:52:00Z",
            "nextRefreshTime": "2026-11-28T10:00:30Z",
            "lastFailureTime": "2026-11-28T09:59:30Z",
            "consecutiveFailures": 3,
        },
    }


def run(argv: list[str], store: FakeStore) -> int:
    def factory(args: argparse.Namespace) -> FakeStore:
        return store

    return main(argv, store_factory=factory, clock=lambda: NOW)


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("team-a/billing", CredentialRef("team-a", "billing")),
        ("billing", CredentialRef(None, "billing")),
    ],
)
def test_parse_ref(text: str, ref: CredentialRef) -> None:
    assert parse_ref(text) == ref


@pytest.mark.parametrize("text", ["", "/x", "x/", "a/b/c"])
def test_parse_ref_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="NAMESPACE/NAME"):
        parse_ref(text)


def test_status_explains_a_failing_credential(capsys: pytest.CaptureFixture[str]) -> None:
    ref = CredentialRef("team-a", "billing")
    assert run(["status", "team-a/billing"], FakeStore({ref: failing_credential()})) == 0
    out = capsys.readouterr().out
    entry = REASONS["TokenEndpointUnavailable"]
    assert out.startswith("ITCareCredential team-a/billing\n")
    assert "Ready:     True  TokenValid" in out
    assert "Refreshed: False TokenEndpointUnavailable - token endpoint unreachable" in out
    assert "Token expires:   2026-11-28T10:12:00Z (in 12m)" in out
    assert "Next refresh:    2026-11-28T10:00:30Z (in 30s)" in out
    assert "Last failure:    2026-11-28T09:59:30Z (30s ago), 3 in a row" in out
    assert entry.meaning in out and entry.action in out
    assert "docs/troubleshooting.md#tokenendpointunavailable" in out


def test_status_of_a_healthy_credential_has_no_failure_entry() -> None:
    obj = failing_credential()
    obj["status"]["conditions"][1] = {
        "type": "Refreshed",
        "status": "True",
        "reason": "RefreshSucceeded",
        "message": "ok",
    }
    out = explain(CredentialRef("team-a", "billing"), obj, NOW)
    assert "What to do" not in out
    assert "Last failure:    2026-11-28T09:59:30Z (30s ago) (recovered since)" in out


def test_status_flags_a_spec_the_operator_has_not_seen() -> None:
    obj = failing_credential()
    obj["metadata"]["generation"] = 3
    out = explain(CredentialRef("team-a", "billing"), obj, NOW)
    assert "status is for generation 2; the spec is at 3" in out


def test_status_of_a_suspended_credential() -> None:
    obj = failing_credential()
    obj["spec"]["suspend"] = True
    out = explain(CredentialRef("team-a", "billing"), obj, NOW)
    assert "Next refresh:    none: spec.suspend is true" in out


def test_status_without_status_says_so() -> None:
    out = explain(CredentialRef("team-a", "billing"), {"metadata": {}, "spec": {}}, NOW)
    assert "no status yet" in out and "Token expires:   no token" in out


def test_status_of_a_cluster_credential_explains_failed_namespaces() -> None:
    obj = failing_credential("SourceNamespaceNotAllowed")
    obj["status"].update(
        selectedNamespaces=3,
        syncedNamespaces=2,
        failedNamespaceCount=1,
        failedNamespaces=[
            {"namespace": "team-x", "reason": "TargetSecretConflict", "message": "not ours"}
        ],
    )
    obj["status"]["conditions"].append(
        {"type": "Synced", "status": "False", "reason": "NamespacesFailed", "message": "1"}
    )
    out = explain(CredentialRef(None, "billing"), obj, NOW)
    assert out.startswith("ClusterITCareCredential billing\n")
    assert "Synced:    False NamespacesFailed" in out
    assert "Namespaces:      3 selected, 2 synced, 1 failed" in out
    assert "team-x: TargetSecretConflict - not ours" in out
    assert REASONS["TargetSecretConflict"].action in out
    assert REASONS["SourceNamespaceNotAllowed"].action in out


def test_status_of_an_expired_token_explains_ready() -> None:
    obj = failing_credential()
    obj["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "TokenExpired", "message": "expired"},
        {"type": "Refreshed", "status": "True", "reason": "RefreshSucceeded", "message": ""},
    ]
    out = explain(CredentialRef("team-a", "billing"), obj, NOW)
    assert REASONS["TokenExpired"].action in out


def test_status_of_a_missing_credential_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "billing"], FakeStore({})) == 1
    err = capsys.readouterr().err
    assert "ClusterITCareCredential billing not found" in err
    assert "-n NAMESPACE billing" in err


def test_status_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "a/b/c"], FakeStore({})) == 2
    assert "error" in capsys.readouterr().err


def test_renew_sets_the_refresh_annotation(capsys: pytest.CaptureFixture[str]) -> None:
    store = FakeStore({})
    assert run(["renew", "team-a/billing"], store) == 0
    ref = CredentialRef("team-a", "billing")
    assert store.annotated == [(ref, {REFRESH_ANNOTATION: "2026-11-28T10:00:00Z"})]
    assert "refresh requested for ITCareCredential team-a/billing" in capsys.readouterr().out


def test_renew_a_cluster_credential() -> None:
    store = FakeStore({})
    assert run(["renew", "billing"], store) == 0
    assert store.annotated[0][0] == CredentialRef(None, "billing")


def test_check_is_itcare_operator_token(
    keycloak: FakeKeycloak,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ITCARE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("ITCARE_CLIENT_SECRET", CLIENT_SECRET)
    assert run(["check", "--token-url", keycloak.token_url], FakeStore({})) == 0
    out = capsys.readouterr().out
    assert "token obtained" in out and "fingerprint:   sha256:" in out
    assert keycloak.count("client_credentials") == 1
    assert run(["check", "--token-url", "http://"], FakeStore({})) == 2


@pytest.mark.parametrize("command", ["status", "renew", "check"])
def test_every_cluster_command_takes_kubeconfig_and_context(command: str) -> None:
    from itcare_operator.kubectl_plugin import build_parser

    extra = ["x/y"] if command != "check" else []
    args = build_parser().parse_args([command, *extra, "--kubeconfig", "/k", "--context", "c"])
    assert (args.kubeconfig, args.context) == ("/k", "c")


def test_the_plugin_is_installed_as_kubectl_itcare() -> None:
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="kubectl-itcare")
    assert script.value == "itcare_operator.kubectl_plugin:main"


# -- kubectl's conventions: -n, -A, -l, --all, -o, version, completion, exit codes -------


def credential(namespace: str | None, name: str, **labels: str) -> dict[str, Any]:
    obj = failing_credential()
    obj["metadata"] = {"name": name, "labels": labels, "generation": 2}
    if namespace:
        obj["metadata"]["namespace"] = namespace
    return obj


def fleet() -> FakeStore:
    return FakeStore(
        {
            CredentialRef("team-a", "billing"): credential("team-a", "billing", tier="gold"),
            CredentialRef("team-a", "ledger"): credential("team-a", "ledger"),
            CredentialRef("team-b", "billing"): credential("team-b", "billing", tier="gold"),
            CredentialRef(None, "shared"): credential(None, "shared", tier="gold"),
        }
    )


def test_status_takes_n_as_kubectl_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "-n", "team-a", "billing"], fleet()) == 0
    assert capsys.readouterr().out.startswith("ITCareCredential team-a/billing\n")
    assert run(["status", "billing", "--namespace", "team-b"], fleet()) == 0
    assert capsys.readouterr().out.startswith("ITCareCredential team-b/billing\n")
    assert run(["status", "-n", "team-b", "team-a/billing"], fleet()) == 2


def test_status_output_json_and_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "-n", "team-a", "billing", "-o", "json"], fleet()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "ITCareCredential" and doc["metadata"]["namespace"] == "team-a"
    assert doc["status"]["consecutiveFailures"] == 3
    assert run(["status", "shared", "-o", "yaml"], fleet()) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "ClusterITCareCredential"


def test_status_all_namespaces_is_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    store = fleet()
    assert run(["status", "-A"], store) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE", "NAME", "KIND", "READY", "REASON", "EXPIRES", "NEXT", "REFRESH"
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[1:]] == [
        ["shared", "ClusterITCareCredential"],
        ["team-a", "billing"],
        ["team-a", "ledger"],
        ["team-b", "billing"],
    ]
    assert "TokenEndpointUnavailable" in lines[1] and "in 12m" in lines[1]
    assert run(["status", "-A", "-l", "tier=gold", "-o", "json"], store) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "List" and len(doc["items"]) == 3


def test_renew_all_and_by_selector() -> None:
    store = fleet()
    assert run(["renew", "--all", "-n", "team-a"], store) == 0
    assert [ref for ref, _ in store.annotated] == [
        CredentialRef("team-a", "billing"),
        CredentialRef("team-a", "ledger"),
    ]
    store = fleet()
    assert run(["renew", "-A", "-l", "tier=gold"], store) == 0
    assert {ref for ref, _ in store.annotated} == {
        CredentialRef("team-a", "billing"),
        CredentialRef("team-b", "billing"),
        CredentialRef(None, "shared"),
    }
    assert all(a == {REFRESH_ANNOTATION: "2026-11-28T10:00:00Z"} for _, a in store.annotated)


@pytest.mark.parametrize(
    "argv",
    [["renew"], ["renew", "-n", "team-a"], ["renew", "x", "--all"], ["status", "x", "-A"]],
)
def test_selection_usage_errors_exit_2(argv: list[str]) -> None:
    store = fleet()
    assert run(argv, store) == 2
    assert store.annotated == [] and store.listed == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["version"], FakeStore({})) == 0
    assert capsys.readouterr().out == f"kubectl-itcare {__version__}\n"
    assert run(["version", "-o", "json"], FakeStore({})) == 0
    assert json.loads(capsys.readouterr().out) == {"clientVersion": __version__}


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_parse(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["completion", shell], FakeStore({})) == 0
    script = capsys.readouterr().out
    assert "kubectl-itcare" in script and "status renew check version completion" in script
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed")
    proc = subprocess.run([binary, "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bash_completion_completes_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["completion", "bash"], FakeStore({})) == 0
    script = capsys.readouterr().out
    probe = 'COMP_WORDS=(kubectl-itcare re); COMP_CWORD=1; _kubectl_itcare; echo "${COMPREPLY[@]}"'
    proc = subprocess.run(["bash", "-c", script + probe], capture_output=True, text=True)
    assert proc.stdout.strip() == "renew"


def unreachable_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "-n", "team-a", "billing"],
        ["status", "-A"],
        ["renew", "team-a/billing"],
        ["check", "--from-secret", "team-a/api-account"],
    ],
)
def test_an_unreachable_api_server_exits_4_and_is_named(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One exit code for an unreachable API server, whatever the subcommand."""
    assert main([*argv, "--kubeconfig", str(unreachable_kubeconfig(tmp_path))]) == 4
    err = capsys.readouterr().err
    assert "API server https://127.0.0.1:9" in err  # the server is named
    assert "not-a-real-token" not in err


def test_the_exit_code_table_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for code, meaning, commands in EXIT_CODES:
        assert f"| {code} | {meaning} | {commands} |" in readme
    assert "Exit codes: 0 done;" in build_parser().format_help().replace("\n", " ")
