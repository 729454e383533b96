"""``kubectl itcare`` (the ``kubectl-itcare`` script): explain a credential, request a
refresh, check an API account.

``status`` and ``renew`` take ``NAMESPACE/NAME`` for an ITCareCredential and ``NAME``
for a ClusterITCareCredential. The rendering is a pure function of the object and the
time; the cluster is reached through :class:`CredentialStore`, so tests pass a fake.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from itcare_operator.cli import (
    EXIT_USAGE,
    UsageError,
    add_cluster_flags,
    add_token_arguments,
    cmd_token,
    load_cluster_config,
)
from itcare_operator.model import REFRESH_ANNOTATION
from itcare_operator.token import format_time, parse_time
from itcare_operator.troubleshooting import DOC_URL, entry

__all__ = [
    "REFRESH_ANNOTATION",
    "CredentialRef",
    "CredentialStore",
    "KubeCredentialStore",
    "PluginError",
    "explain",
    "main",
    "parse_ref",
]

EXIT_OK, EXIT_FAILED = 0, 1
PROG = "kubectl itcare"


class PluginError(Exception):
    """The credential could not be read or annotated (exit code 1)."""


@dataclasses.dataclass(frozen=True)
class CredentialRef:
    namespace: str | None
    """None for a ClusterITCareCredential."""

    name: str

    @property
    def kind(self) -> str:
        return "ITCareCredential" if self.namespace else "ClusterITCareCredential"

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )


def parse_ref(text: str) -> CredentialRef:
    """``NAMESPACE/NAME`` (ITCareCredential) or ``NAME`` (ClusterITCareCredential)."""
    parts = text.split("/")
    if len(parts) == 2 and all(parts):
        return CredentialRef(parts[0], parts[1])
    if len(parts) == 1 and parts[0]:
        return CredentialRef(None, parts[0])
    raise UsageError(
        f"{text!r}: expected NAMESPACE/NAME (ITCareCredential) or NAME (ClusterITCareCredential)"
    )


class CredentialStore(Protocol):
    def get(self, ref: CredentialRef) -> dict[str, Any] | None:
        """The credential, or None when it does not exist."""

    def annotate(self, ref: CredentialRef, annotations: Mapping[str, str]) -> None:
        """Merge these annotations into the credential's metadata."""


class KubeCredentialStore:
    """The credentials on the cluster of a kubeconfig (and context)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        import kubernetes

        configuration = load_cluster_config(kubeconfig, context)
        self._client = kubernetes.client.ApiClient(configuration)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)

    def _call(self, ref: CredentialRef, call: Callable[..., Any], *args: Any) -> Any:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        from itcare_operator.kube_api import CLUSTER_PLURAL, GROUP, PLURAL, VERSION

        try:
            if ref.namespace:
                return call(GROUP, VERSION, ref.namespace, PLURAL, ref.name, *args)
            return call(GROUP, VERSION, CLUSTER_PLURAL, ref.name, *args)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise PluginError(f"{ref}: {exc.status} {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PluginError(f"cannot reach the API server ({type(exc).__name__})") from None

    def get(self, ref: CredentialRef) -> dict[str, Any] | None:
        get = (
            self._custom.get_namespaced_custom_object
            if ref.namespace
            else self._custom.get_cluster_custom_object
        )
        found: dict[str, Any] | None = self._call(ref, get)
        return found

    def annotate(self, ref: CredentialRef, annotations: Mapping[str, str]) -> None:
        patch = (
            self._custom.patch_namespaced_custom_object
            if ref.namespace
            else self._custom.patch_cluster_custom_object
        )
        if self._call(ref, patch, {"metadata": {"annotations": dict(annotations)}}) is None:
            raise PluginError(f"{ref} not found")

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


def _ago(when: dt.datetime, now: dt.datetime) -> str:
    seconds = int((when - now).total_seconds())
    span = abs(seconds)
    text = (
        f"{span}s"
        if span < 120
        else f"{span // 60}m"
        if span < 7200
        else f"{span // 3600}h{span % 3600 // 60:02d}m"
    )
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def _time(status: Mapping[str, Any], key: str, now: dt.datetime) -> str | None:
    raw = status.get(key)
    if not raw:
        return None
    try:
        when = parse_time(str(raw))
    except ValueError:
        return str(raw)
    return f"{format_time(when)} ({_ago(when, now)})"


def _entry_lines(reason: str, indent: str = "  ") -> list[str]:
    found = entry(reason)
    if found is None:
        return [f"{indent}(no troubleshooting entry for {reason}: see {DOC_URL})"]
    return [
        f"{indent}Meaning:    {found.meaning}",
        f"{indent}What to do: {found.action}",
        f"{indent}More:       {DOC_URL}#{reason.lower()}",
    ]


def explain(ref: CredentialRef, obj: Mapping[str, Any], now: dt.datetime) -> str:
    """What a user needs to know about one credential, in plain text."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    lines = [str(ref)]
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("type")}
    if not status:
        lines.append("  no status yet: is the operator running and serving this kind?")
    for type_ in ("Ready", "Refreshed", "Synced"):
        cond = conditions.get(type_)
        if cond:
            lines.append(
                f"  {type_ + ':':<11}{cond.get('status', '?'):<6}{cond.get('reason', '')}"
                f" - {cond.get('message', '')}"
            )
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if status and generation is not None and observed is not None and observed != generation:
        lines.append(
            f"  the status is for generation {observed}; the spec is at {generation} "
            "(the operator has not processed the latest change yet)"
        )
    target = (spec.get("targetSecret") or {}).get("name")
    where = " (in every selected namespace)" if not ref.namespace else ""
    lines.append(f"Target Secret:   {target or '?'}{where}")
    lines.append(f"Token expires:   {_time(status, 'tokenExpiresAt', now) or 'no token'}")
    if status.get("refreshTokenExpiresAt"):
        lines.append(f"Refresh token:   expires {_time(status, 'refreshTokenExpiresAt', now)}")
    lines.append(f"Last refresh:    {_time(status, 'lastRefreshTime', now) or 'never'}")
    next_refresh = _time(status, "nextRefreshTime", now)
    if spec.get("suspend"):
        next_refresh = "none: spec.suspend is true"
    lines.append(f"Next refresh:    {next_refresh or 'not scheduled'}")
    if not ref.namespace and status:
        lines.append(
            f"Namespaces:      {status.get('selectedNamespaces', 0)} selected, "
            f"{status.get('syncedNamespaces', 0)} synced, "
            f"{status.get('failedNamespaceCount', 0)} failed"
        )
    refreshed = conditions.get("Refreshed")
    failures = status.get("consecutiveFailures") or 0
    last_failure = _time(status, "lastFailureTime", now)
    if refreshed and refreshed.get("status") == "False":
        reason = str(refreshed.get("reason") or "")
        lines.append(f"Last failure:    {last_failure or '?'}, {failures} in a row: {reason}")
        lines.append(f"  {refreshed.get('message', '')}")
        lines.extend(_entry_lines(reason))
    elif last_failure:
        lines.append(f"Last failure:    {last_failure} (recovered since)")
    ready = conditions.get("Ready")
    if (
        ready
        and ready.get("status") == "False"
        and ready.get("reason")
        in (
            "TokenExpired",
            "NoToken",
        )
        and not (refreshed and refreshed.get("status") == "False")
    ):
        lines.append(f"Not ready: {ready.get('reason')}")
        lines.extend(_entry_lines(str(ready.get("reason"))))
    failed = status.get("failedNamespaces") or []
    if failed:
        lines.append("Failed namespaces:")
        for item in failed:
            lines.append(
                f"  {item.get('namespace')}: {item.get('reason')} - {item.get('message', '')}"
            )
        for reason in sorted({str(item.get("reason")) for item in failed}):
            lines.append(f"  {reason}:")
            lines.extend(_entry_lines(reason, indent="    "))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and refresh ITCare credentials. NAMESPACE/NAME names an "
        "ITCareCredential, NAME alone a ClusterITCareCredential.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, summary, description in (
        (
            "status",
            "explain a credential",
            "Conditions, expiry, next refresh, and the last failure with the "
            "troubleshooting entry for its reason. Exit codes: 0 shown, 1 not found or "
            "unreadable, 2 usage.",
        ),
        (
            "renew",
            "request a refresh now",
            f"Set the {REFRESH_ANNOTATION} annotation; the operator refreshes "
            "within seconds (rate-limited per credential).",
        ),
    ):
        one = sub.add_parser(command, help=summary, description=description)
        one.add_argument("credential", metavar="NAMESPACE/NAME|NAME")
        add_cluster_flags(one)
    check = sub.add_parser(
        "check",
        help="obtain one token to check an API account (itcare-operator token)",
        description="Same as itcare-operator token. Exit codes: 0 ok, 2 usage, "
        "3 credentials rejected, 4 endpoint unavailable, 5 invalid response.",
    )
    add_token_arguments(check)
    return parser


def status_command(ref: CredentialRef, store: CredentialStore, now: dt.datetime) -> str:
    obj = store.get(ref)
    if obj is None:
        other = (
            f"NAME alone names a ClusterITCareCredential; for an ITCareCredential "
            f"use NAMESPACE/{ref.name}"
            if not ref.namespace
            else "NAME alone names a ClusterITCareCredential"
        )
        raise PluginError(f"{ref} not found ({other})")
    return explain(ref, obj, now)


def renew_command(ref: CredentialRef, store: CredentialStore, now: dt.datetime) -> str:
    value = format_time(now)
    store.annotate(ref, {REFRESH_ANNOTATION: value})
    return f"refresh requested for {ref} ({REFRESH_ANNOTATION}={value})"


def main(
    argv: Sequence[str] | None = None,
    *,
    store_factory: Callable[[argparse.Namespace], CredentialStore] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    try:
        if args.command == "check":
            return cmd_token(args)
        ref = parse_ref(args.credential)
        store = (
            store_factory(args)
            if store_factory
            else KubeCredentialStore(args.kubeconfig, args.context)
        )
        command = status_command if args.command == "status" else renew_command
        try:
            print(command(ref, store, clock()))
        finally:
            if isinstance(store, KubeCredentialStore):
                store.close()
        return EXIT_OK
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PluginError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
