"""``kubectl itcare`` (the ``kubectl-itcare`` script): explain credentials, request
refreshes, check an API account, print the version, complete the command line.

A credential is named as kubectl names objects: ``NAME`` with ``-n NAMESPACE`` for an
ITCareCredential; ``NAMESPACE/NAME`` for one too; ``NAME`` alone (no ``-n``) for a
ClusterITCareCredential. ``-A`` and ``-l`` select many. The rendering is a pure function
of the objects and the time; the cluster is reached through :class:`CredentialStore`, so
tests pass a fake.

Exit codes, the same for every subcommand (``EXIT_CODES``): 0 done; 1 not found or
refused by the API server; 2 usage (arguments, kubeconfig); 3 credentials rejected by the
token endpoint (``check``); 4 unreachable: the API server, or the token endpoint
(``check``); 5 invalid token response (``check``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from itcare_operator._version import __version__
from itcare_operator.cli import (
    EXIT_USAGE,
    UsageError,
    add_cluster_flags,
    add_token_arguments,
    cmd_token,
    load_cluster_config,
)
from itcare_operator.cli_token import ApiServerUnreachable
from itcare_operator.kubectl_completion import completion
from itcare_operator.model import REFRESH_ANNOTATION
from itcare_operator.token import format_time, parse_time
from itcare_operator.troubleshooting import DOC_URL, entry

__all__ = [
    "EXIT_CODES",
    "REFRESH_ANNOTATION",
    "ApiUnreachable",
    "CredentialRef",
    "CredentialStore",
    "KubeCredentialStore",
    "PluginError",
    "explain",
    "main",
    "parse_ref",
    "summary",
]

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 4
PROG = "kubectl itcare"

EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (0, "done", "every subcommand"),
    (1, "not found, or refused by the API server (e.g. 403)", "status, renew"),
    (2, "usage: bad arguments, no usable kubeconfig", "every subcommand"),
    (3, "credentials rejected by the token endpoint", "check"),
    (
        4,
        "unreachable: the API server (status, renew, check --from-secret) or the token "
        "endpoint (check)",
        "status, renew, check",
    ),
    (5, "invalid token response", "check"),
)
"""(code, meaning, subcommands): printed by ``--help`` and docs/kubectl-plugin.md."""


class PluginError(Exception):
    """The credential could not be read or annotated (exit code 1)."""


class ApiUnreachable(PluginError):
    """The API server did not answer (exit code 4); the message names it."""


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


def parse_ref(text: str, namespace: str | None = None) -> CredentialRef:
    """``NAMESPACE/NAME`` or ``NAME`` with ``namespace`` (ITCareCredential), ``NAME``
    alone (ClusterITCareCredential)."""
    parts = text.split("/")
    if len(parts) == 2 and all(parts):
        if namespace and namespace != parts[0]:
            raise UsageError(f"{text!r} names namespace {parts[0]}, -n says {namespace}")
        return CredentialRef(parts[0], parts[1])
    if len(parts) == 1 and parts[0]:
        return CredentialRef(namespace, parts[0])
    raise UsageError(
        f"{text!r}: expected NAME with -n NAMESPACE or NAMESPACE/NAME (ITCareCredential), "
        "or NAME alone (ClusterITCareCredential)"
    )


class CredentialStore(Protocol):
    server: str
    """The API server's address, for messages."""

    def get(self, ref: CredentialRef) -> dict[str, Any] | None:
        """The credential, or None when it does not exist."""

    def annotate(self, ref: CredentialRef, annotations: Mapping[str, str]) -> None:
        """Merge these annotations into the credential's metadata."""

    def list(
        self, namespace: str | None, selector: str | None, *, cluster: bool
    ) -> list[dict[str, Any]]:
        """ITCareCredentials in ``namespace`` (None: every namespace), or with ``cluster``
        the ClusterITCareCredentials (none when their CRD is absent)."""


class KubeCredentialStore:
    """The credentials on the cluster of a kubeconfig (and context)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        import kubernetes

        configuration = load_cluster_config(kubeconfig, context)
        self.server: str = str(configuration.host)
        self._client = kubernetes.client.ApiClient(configuration)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)

    def _call(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise PluginError(f"{what}: {exc.status} {exc.reason} from {self.server}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiUnreachable(
                f"cannot reach the API server {self.server} ({type(exc).__name__})"
            ) from None

    def _on(self, ref: CredentialRef, call: Callable[..., Any], *args: Any) -> Any:
        from itcare_operator.kube_api import CLUSTER_PLURAL, GROUP, PLURAL, VERSION

        if ref.namespace:
            return self._call(
                str(ref), call, GROUP, VERSION, ref.namespace, PLURAL, ref.name, *args
            )
        return self._call(str(ref), call, GROUP, VERSION, CLUSTER_PLURAL, ref.name, *args)

    def get(self, ref: CredentialRef) -> dict[str, Any] | None:
        get = (
            self._custom.get_namespaced_custom_object
            if ref.namespace
            else self._custom.get_cluster_custom_object
        )
        found: dict[str, Any] | None = self._on(ref, get)
        return found

    def annotate(self, ref: CredentialRef, annotations: Mapping[str, str]) -> None:
        patch = (
            self._custom.patch_namespaced_custom_object
            if ref.namespace
            else self._custom.patch_cluster_custom_object
        )
        if self._on(ref, patch, {"metadata": {"annotations": dict(annotations)}}) is None:
            raise PluginError(f"{ref} not found")

    def list(
        self, namespace: str | None, selector: str | None, *, cluster: bool
    ) -> list[dict[str, Any]]:
        from itcare_operator.kube_api import CLUSTER_PLURAL, GROUP, PLURAL, VERSION

        extra = {"label_selector": selector} if selector else {}
        if cluster:
            found = self._call(
                "ClusterITCareCredentials",
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                CLUSTER_PLURAL,
                **extra,
            )
        elif namespace:
            found = self._call(
                f"ITCareCredentials in {namespace}",
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                **extra,
            )
        else:
            found = self._call(
                "ITCareCredentials",
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                **extra,
            )
        return list((found or {}).get("items") or [])

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


def summary(ref: CredentialRef, obj: Mapping[str, Any]) -> dict[str, Any]:
    """One credential as ``-o json|yaml`` prints it: its identity, spec and status (the
    object holds no secret; managed fields are left out)."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    return {
        "apiVersion": obj.get("apiVersion", "itcare.cegedim.cloud/v1alpha1"),
        "kind": ref.kind,
        "metadata": meta,
        "spec": obj.get("spec") or {},
        "status": obj.get("status") or {},
    }


def _ref_of(obj: Mapping[str, Any], cluster: bool) -> CredentialRef:
    meta = obj.get("metadata") or {}
    return CredentialRef(None if cluster else meta.get("namespace"), str(meta.get("name")))


def _row(ref: CredentialRef, obj: Mapping[str, Any], now: dt.datetime) -> list[str]:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("type")}
    ready, refreshed = conditions.get("Ready") or {}, conditions.get("Refreshed") or {}
    reason = (
        refreshed.get("reason")
        if refreshed.get("status") == "False"
        else ready.get("reason") or refreshed.get("reason")
    )
    expires = _time(status, "tokenExpiresAt", now)
    next_refresh = _time(status, "nextRefreshTime", now)
    return [
        ref.namespace or "",
        ref.name,
        "ClusterITCareCredential" if not ref.namespace else "ITCareCredential",
        str(ready.get("status", "Unknown")),
        str(reason or ""),
        expires.split(" (")[1].rstrip(")") if expires and " (" in expires else "-",
        next_refresh.split(" (")[1].rstrip(")") if next_refresh and " (" in next_refresh else "-",
    ]


def table(items: Sequence[tuple[CredentialRef, Mapping[str, Any]]], now: dt.datetime) -> str:
    header = ["NAMESPACE", "NAME", "KIND", "READY", "REASON", "EXPIRES", "NEXT REFRESH"]
    rows = [header, *(_row(ref, obj, now) for ref, obj in items)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _dump(doc: Any, output: str) -> str:
    if output == "json":
        return json.dumps(doc, indent=2, sort_keys=False)
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False)).rstrip("\n")


def _list_of(docs: list[Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": docs}


def _exit_code_help() -> str:
    return "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning, _ in EXIT_CODES) + "."


def _selection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        metavar="NAMESPACE",
        help="namespace of the ITCareCredential(s)",
    )
    parser.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="ITCareCredentials of every namespace and the ClusterITCareCredentials",
    )
    parser.add_argument(
        "-l",
        "--selector",
        default=None,
        metavar="SELECTOR",
        help="label selector (e.g. team=billing) of the credentials to select",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("text", "json", "yaml"),
        default="text",
        help="output format (default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and refresh ITCare credentials. NAME with -n NAMESPACE (or "
        "NAMESPACE/NAME) names an ITCareCredential, NAME alone a ClusterITCareCredential. "
        + _exit_code_help(),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="explain a credential, or list the selected ones",
        description="One credential: conditions, expiry, next refresh, and the last "
        "failure with the troubleshooting entry for its reason. Without NAME (with -n, -A "
        "or -l): a table of the selected credentials. " + _exit_code_help(),
    )
    status.add_argument("credential", nargs="?", metavar="NAME|NAMESPACE/NAME")
    _selection_flags(status)
    add_cluster_flags(status)
    renew = sub.add_parser(
        "renew",
        help="request a refresh now",
        description=f"Set the {REFRESH_ANNOTATION} annotation; the operator refreshes "
        "within seconds (rate-limited per credential). One NAME, or --all / -l for the "
        "selected credentials (in -n NAMESPACE, the context's namespace, or with -A "
        "everywhere). " + _exit_code_help(),
    )
    renew.add_argument("credential", nargs="?", metavar="NAME|NAMESPACE/NAME")
    renew.add_argument(
        "--all", action="store_true", help="every credential in the namespace (or with -A)"
    )
    _selection_flags(renew)
    add_cluster_flags(renew)
    check = sub.add_parser(
        "check",
        help="obtain one token to check an API account (itcare-operator token)",
        description="Same as itcare-operator token. " + _exit_code_help(),
    )
    add_token_arguments(check)
    version = sub.add_parser("version", help="print the plugin's version")
    version.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    completion_parser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="source <(kubectl-itcare completion bash) completes kubectl-itcare: "
        "subcommands, flags, namespaces and credential names (through kubectl).",
    )
    completion_parser.add_argument("shell", choices=("bash", "zsh"))
    return parser


def status_command(ref: CredentialRef, store: CredentialStore, now: dt.datetime) -> str:
    obj = store.get(ref)
    if obj is None:
        other = (
            f"NAME alone names a ClusterITCareCredential; for an ITCareCredential "
            f"use -n NAMESPACE {ref.name}"
            if not ref.namespace
            else "NAME alone names a ClusterITCareCredential"
        )
        raise PluginError(f"{ref} not found ({other})")
    return explain(ref, obj, now)


def renew_command(ref: CredentialRef, store: CredentialStore, now: dt.datetime) -> str:
    value = format_time(now)
    store.annotate(ref, {REFRESH_ANNOTATION: value})
    return f"refresh requested for {ref} ({REFRESH_ANNOTATION}={value})"


def _context_namespace(args: argparse.Namespace) -> str:
    """The kubeconfig context's namespace, as kubectl defaults to it."""
    import kubernetes

    try:
        _, current = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig
        )
        if args.context:
            contexts, _ = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=args.kubeconfig
            )
            current = next(c for c in contexts if c["name"] == args.context)
        return str((current.get("context") or {}).get("namespace") or "default")
    except (kubernetes.config.ConfigException, OSError, StopIteration, TypeError):
        return "default"


def _selected(
    args: argparse.Namespace, store: CredentialStore
) -> list[tuple[CredentialRef, dict[str, Any]]]:
    if args.all_namespaces:
        found = [(_ref_of(o, False), o) for o in store.list(None, args.selector, cluster=False)]
        found += [(_ref_of(o, True), o) for o in store.list(None, args.selector, cluster=True)]
    else:
        namespace = args.namespace or _context_namespace(args)
        found = [
            (_ref_of(o, False), o) for o in store.list(namespace, args.selector, cluster=False)
        ]
    return sorted(found, key=lambda item: (item[0].namespace or "", item[0].name))


def _many(args: argparse.Namespace) -> bool:
    """Whether the command selects many credentials rather than naming one."""
    if args.credential:
        if args.all_namespaces or args.selector or getattr(args, "all", False):
            raise UsageError("name one credential, or select with --all, -l or -A, not both")
        return False
    if args.command == "renew" and not (args.all or args.selector):
        raise UsageError("renew needs NAME, --all or -l SELECTOR")
    return True


def _run_cluster_command(args: argparse.Namespace, store: CredentialStore, now: dt.datetime) -> str:
    if not _many(args):
        ref = parse_ref(args.credential, args.namespace)
        if args.command == "renew":
            text = renew_command(ref, store, now)
            doc: Any = {"renewed": [str(ref)], "requestedAt": format_time(now)}
            return text if args.output == "text" else _dump(doc, args.output)
        if args.output == "text":
            return status_command(ref, store, now)
        obj = store.get(ref)
        if obj is None:
            status_command(ref, store, now)  # raises the not-found error
        return _dump(summary(ref, obj or {}), args.output)
    items = _selected(args, store)
    if args.command == "renew":
        for ref, _ in items:
            store.annotate(ref, {REFRESH_ANNOTATION: format_time(now)})
        lines = [f"refresh requested for {ref}" for ref, _ in items]
        if args.output != "text":
            doc = {"renewed": [str(ref) for ref, _ in items], "requestedAt": format_time(now)}
            return _dump(doc, args.output)
        return "\n".join(lines) if lines else "no credential matched"
    if args.output != "text":
        return _dump(_list_of([summary(ref, obj) for ref, obj in items]), args.output)
    return table(items, now) if items else "no credential matched"


def main(
    argv: Sequence[str] | None = None,
    *,
    store_factory: Callable[[argparse.Namespace], CredentialStore] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    try:
        if args.command == "version":
            doc = {"clientVersion": __version__}
            print(
                f"kubectl-itcare {__version__}"
                if args.output == "text"
                else _dump(doc, args.output)
            )
            return EXIT_OK
        if args.command == "completion":
            print(completion(args.shell), end="")
            return EXIT_OK
        if args.command == "check":
            try:
                return cmd_token(args)
            except ApiServerUnreachable as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                return EXIT_UNREACHABLE
        _many(args)  # usage errors before the kubeconfig is read
        if args.credential:
            parse_ref(args.credential, args.namespace)
        store = (
            store_factory(args)
            if store_factory
            else KubeCredentialStore(args.kubeconfig, args.context)
        )
        try:
            print(_run_cluster_command(args, store, clock()))
        finally:
            if isinstance(store, KubeCredentialStore):
                store.close()
        return EXIT_OK
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiUnreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except PluginError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_FAILED
