"""``itcare-operator``: run the operator, check an API account, print the version."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itcare_operator._version import __version__
from itcare_operator.errors import (
    CredentialError,
    EndpointUnavailable,
    InvalidTokenResponse,
    RateLimited,
    RequestRejected,
    TokenEndpointError,
)
from itcare_operator.settings import DEFAULT_ALLOWED_TOKEN_URL, Settings
from itcare_operator.token import ClientCredentials, Token, fingerprint, format_time
from itcare_operator.token_endpoint import DEFAULT_TOKEN_URL, TokenEndpoint, utcnow
from itcare_operator.token_url import InvalidTokenURL, is_loopback_http, parse_prefix

__all__ = [
    "UsageError",
    "add_cluster_flags",
    "add_token_arguments",
    "cmd_token",
    "load_cluster_config",
    "main",
]

EXIT_OK, EXIT_USAGE, EXIT_REJECTED, EXIT_UNAVAILABLE, EXIT_INVALID = 0, 2, 3, 4, 5
ENV_PREFIX = "ITCARE_OPERATOR_"


class UsageError(Exception):
    """Bad flags or unusable credentials input (exit code 2)."""


def _env(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))


def _env_bool(name: str) -> bool:
    value = (_env(name) or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"{ENV_PREFIX}{name.upper().replace('-', '_')} must be true or false")


def _env_list(name: str) -> list[str] | None:
    value = _env(name)
    if value is None:
        return None
    return [item for item in value.replace(",", " ").split() if item]


# argparse names the converter function in its own "invalid <name> value" message;
# raising ArgumentTypeError gives the user our text after the flag's name instead.
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0..65535, 0 disables)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """``--kubeconfig``/``--context``, as kubectl spells them, on every command that
    talks to a cluster."""
    parser.add_argument(
        "--kubeconfig",
        default=None,
        metavar="FILE",
        help="kubeconfig file (default: in-cluster, else KUBECONFIG or ~/.kube/config)",
    )
    parser.add_argument("--context", default=None, metavar="NAME", help="kubeconfig context to use")


def check_token_url(url: str) -> None:
    """A usage error, before any request, for a URL that cannot name an endpoint."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise UsageError("--token-url must be an http(s) URL with a host")


TOKEN_DESCRIPTION = (
    "Obtain one token and report its expiry and fingerprint. Credentials come from "
    "ITCARE_CLIENT_ID/ITCARE_CLIENT_SECRET, from files, or from a Kubernetes Secret. "
    "Exit codes: 0 ok, 2 usage, 3 credentials rejected, 4 endpoint unavailable, "
    "5 invalid response."
)


def add_token_arguments(token: argparse.ArgumentParser) -> None:
    """The flags of ``itcare-operator token``, shared with ``kubectl itcare check``."""
    token.add_argument("--token-url", default=DEFAULT_TOKEN_URL, metavar="URL")
    token.add_argument("--client-id-file", metavar="FILE")
    token.add_argument("--client-secret-file", metavar="FILE")
    token.add_argument(
        "--from-secret",
        metavar="NAMESPACE/NAME",
        help="read the API account from this Secret through the kubeconfig",
    )
    token.add_argument("--client-id-key", default="client-id", help="key in --from-secret")
    token.add_argument("--client-secret-key", default="client-secret", help="key in --from-secret")
    token.add_argument("--scope", default="", help="space-separated scopes")
    token.add_argument(
        "--ca-bundle",
        metavar="FILE",
        help="PEM CA bundle trusted in addition to the default CAs",
    )
    token.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow a plain http --token-url to a non-loopback host (sends the secret in clear)",
    )
    token.add_argument("--output", choices=("text", "json"), default="text")
    token.add_argument("--print-token", action="store_true", help="also print the access token")
    add_cluster_flags(token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itcare-operator",
        description="Keep a fresh cegedim.cloud ITCare OAuth2 token in a Kubernetes Secret.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the operator",
        description="Run the operator. Every flag can also be set as ITCARE_OPERATOR_<FLAG>.",
    )
    run.add_argument(
        "--namespace",
        action="append",
        default=None,
        metavar="NS",
        help="namespace to watch (repeatable; default: all namespaces)",
    )
    run.add_argument("--metrics-port", type=_port, default=None, help="Prometheus port (9090)")
    run.add_argument(
        "--health-port", type=_port, default=None, help="/healthz, /readyz port (8080)"
    )
    run.add_argument(
        "--allowed-token-url",
        action="append",
        default=None,
        metavar="PREFIX",
        help=f"allowed tokenURL prefix (repeatable; default {DEFAULT_ALLOWED_TOKEN_URL})",
    )
    run.add_argument(
        "--no-require-source-label",
        action="store_true",
        default=None,
        help="read source Secrets without the itcare.cegedim.cloud/api-account label",
    )
    run.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=None,
        metavar="N",
        help="token requests in flight per token endpoint (10)",
    )
    run.add_argument(
        "--requests-per-second",
        type=_positive_float,
        default=None,
        metavar="R",
        help="token requests started per second per token endpoint (20)",
    )
    run.add_argument(
        "--token-timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="total time one token request may take (20)",
    )
    run.add_argument(
        "--ca-bundle",
        default=None,
        metavar="FILE",
        help="PEM CA bundle trusted for token endpoints in addition to the default CAs",
    )
    run.add_argument(
        "--volume-delivery-seconds",
        type=_positive_int,
        default=None,
        metavar="SECONDS",
        help="longest time the kubelets take to update a Secret volume; the refresh "
        "margin never goes below it (120; 1.5 x the kubelet's syncFrequency, 1m, measured "
        "up to 83 s, plus a margin)",
    )
    run.add_argument("--log-format", choices=("text", "json"), default=None)
    run.add_argument(
        "--log-level",
        default=None,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"),
    )
    run.add_argument(
        "--standalone",
        action="store_true",
        default=None,
        help="no leader election: do not coordinate with other replicas",
    )
    run.add_argument(
        "--cluster-credentials",
        action="store_true",
        default=None,
        help="also serve ClusterITCareCredentials (cluster-wide mode only)",
    )
    run.add_argument(
        "--allowed-source-namespace",
        action="append",
        default=None,
        metavar="NS",
        help="namespace a ClusterITCareCredential may read its API account from "
        "(repeatable; default: the operator's own namespace, POD_NAMESPACE)",
    )
    add_cluster_flags(run)

    token = sub.add_parser(
        "token",
        help="obtain one token to check an API account",
        description=TOKEN_DESCRIPTION,
    )
    add_token_arguments(token)

    sub.add_parser("version", help="print the version")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags win over ``ITCARE_OPERATOR_*`` environment variables, which win over defaults."""
    defaults = Settings()

    def pick(flag: object, env: str, convert: type = str) -> object:
        if flag is not None:
            return flag
        raw = _env(env)
        if raw is None:
            return getattr(defaults, env.replace("-", "_"))
        try:
            return convert(raw)
        except ValueError:
            raise UsageError(
                f"{ENV_PREFIX}{env.upper().replace('-', '_')}: invalid value"
            ) from None

    namespaces = args.namespace or _env_list("namespace") or []
    allowed = (
        args.allowed_token_url
        or _env_list("allowed-token-url")
        or list(defaults.allowed_token_urls)
    )
    require_label = not (args.no_require_source_label or _env_bool("no-require-source-label"))
    log_format = str(pick(args.log_format, "log-format"))
    if log_format not in ("text", "json"):
        raise UsageError("log format must be text or json")
    delivery = args.volume_delivery_seconds
    if delivery is None and (raw := _env("volume-delivery-seconds")) is not None:
        try:
            delivery = _positive_int(raw)
        except (ValueError, argparse.ArgumentTypeError):
            raise UsageError(f"{ENV_PREFIX}VOLUME_DELIVERY_SECONDS: invalid value") from None
    settings = Settings(
        volume_delivery=(
            defaults.volume_delivery if delivery is None else dt.timedelta(seconds=delivery)
        ),
        namespaces=tuple(dict.fromkeys(namespaces)),
        metrics_port=int(pick(args.metrics_port, "metrics-port", int)),  # type: ignore[call-overload]
        health_port=int(pick(args.health_port, "health-port", int)),  # type: ignore[call-overload]
        allowed_token_urls=tuple(allowed),
        require_source_label=require_label,
        max_concurrent_requests=int(
            pick(args.max_concurrent_requests, "max-concurrent-requests", int)
        ),  # type: ignore[call-overload]
        requests_per_second=float(pick(args.requests_per_second, "requests-per-second", float)),  # type: ignore[arg-type]
        token_timeout=float(pick(args.token_timeout, "token-timeout", float)),  # type: ignore[arg-type]
        ca_bundle=args.ca_bundle or _env("ca-bundle"),
        log_format=log_format,
        log_level=str(pick(args.log_level, "log-level")).upper(),
        standalone=bool(args.standalone or _env_bool("standalone")),
        cluster_credentials=bool(args.cluster_credentials or _env_bool("cluster-credentials")),
        allowed_source_namespaces=tuple(
            dict.fromkeys(
                args.allowed_source_namespace or _env_list("allowed-source-namespace") or []
            )
        ),
        operator_namespace=os.environ.get("POD_NAMESPACE") or defaults.operator_namespace,
        kubeconfig=args.kubeconfig or _env("kubeconfig"),
        context=args.context or _env("context"),
    )
    if settings.cluster_credentials and settings.namespaces:
        raise UsageError("--cluster-credentials needs cluster-wide mode (no --namespace)")
    for url in settings.allowed_token_urls:
        try:
            parse_prefix(url)
        except InvalidTokenURL as exc:
            raise UsageError(f"--allowed-token-url: {exc}") from None
    if (
        settings.max_concurrent_requests < 1
        or settings.requests_per_second <= 0
        or settings.token_timeout <= 0
    ):
        raise UsageError(
            "--max-concurrent-requests, --requests-per-second and --token-timeout must be positive"
        )
    return settings


def _read_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.__class__.__name__}") from None
    if not value:
        raise UsageError(f"{what} file {path} is empty")
    return value


def credentials_from_args(args: argparse.Namespace) -> ClientCredentials:
    if args.from_secret:
        if args.client_id_file or args.client_secret_file:
            raise UsageError("--from-secret cannot be combined with --client-*-file")
        namespace, _, name = args.from_secret.partition("/")
        if not namespace or not name:
            raise UsageError("--from-secret takes NAMESPACE/NAME")
        import kubernetes
        import yaml

        from itcare_operator.kube import read_credentials_sync

        load_cluster_config(args.kubeconfig, args.context)  # usage errors before any call
        try:
            return read_credentials_sync(
                namespace,
                name,
                args.client_id_key,
                args.client_secret_key,
                kubeconfig=args.kubeconfig,
                context=args.context,
            )
        except CredentialError as exc:
            raise UsageError(f"--from-secret {namespace}/{name}: {exc}") from None
        except (kubernetes.config.ConfigException, yaml.YAMLError, OSError) as exc:
            raise UsageError(f"--from-secret: {kubeconfig_problem(exc)}") from None
    if bool(args.client_id_file) != bool(args.client_secret_file):
        raise UsageError("--client-id-file and --client-secret-file go together")
    if args.client_id_file:
        return ClientCredentials(
            _read_file(args.client_id_file, "client id"),
            _read_file(args.client_secret_file, "client secret"),
        )
    client_id = os.environ.get("ITCARE_CLIENT_ID", "").strip()
    client_secret = os.environ.get("ITCARE_CLIENT_SECRET", "").strip()
    if not client_id or not client_secret:
        raise UsageError(
            "no credentials: set ITCARE_CLIENT_ID and ITCARE_CLIENT_SECRET, "
            "or use --client-id-file/--client-secret-file or --from-secret"
        )
    return ClientCredentials(client_id, client_secret)


def _report(token: Token, args: argparse.Namespace) -> str:
    now = utcnow()
    expires_in = int((token.expires_at - now).total_seconds())
    if args.output == "json":
        doc: dict[str, object] = {
            "tokenURL": args.token_url,
            "tokenType": token.token_type,
            "expiresAt": format_time(token.expires_at),
            "expiresInSeconds": expires_in,
            "fingerprint": fingerprint(token.access_token),
            "refreshToken": token.refresh_token is not None,
        }
        if token.refresh_expires_at:
            doc["refreshTokenExpiresAt"] = format_time(token.refresh_expires_at)
        if args.print_token:
            doc["accessToken"] = token.access_token
        return json.dumps(doc, indent=2)
    lines = [
        "token obtained",
        f"  token URL:     {args.token_url}",
        f"  expires at:    {format_time(token.expires_at)} (in {expires_in} s)",
        f"  fingerprint:   {fingerprint(token.access_token)}",
        f"  refresh token: {'yes' if token.refresh_token else 'no'}",
    ]
    if args.print_token:
        lines.append(f"  access token:  {token.access_token}")
    return "\n".join(lines)


async def _obtain(args: argparse.Namespace, credentials: ClientCredentials) -> Token:
    endpoint = TokenEndpoint(args.token_url, ca_bundle=args.ca_bundle)
    try:
        return await endpoint.client_credentials(credentials, scope=args.scope)
    finally:
        await endpoint.aclose()


def cmd_token(args: argparse.Namespace) -> int:
    check_token_url(args.token_url)
    if (
        args.token_url.startswith("http://")
        and not is_loopback_http(args.token_url)
        and not args.insecure_http
    ):
        raise UsageError(
            "--token-url is plain http to a non-loopback host: the client secret would "
            "cross the network in clear text (use https, or --insecure-http to insist)"
        )
    if args.ca_bundle and not Path(args.ca_bundle).is_file():
        raise UsageError(f"--ca-bundle {args.ca_bundle}: no such file")
    credentials = credentials_from_args(args)
    try:
        token = asyncio.run(_obtain(args, credentials))
    except TokenEndpointError as exc:
        print(f"itcare-operator token: {exc.reason}: {exc}", file=sys.stderr)
        if isinstance(exc, RequestRejected):
            return EXIT_REJECTED
        if isinstance(exc, EndpointUnavailable | RateLimited):
            return EXIT_UNAVAILABLE
        if isinstance(exc, InvalidTokenResponse):
            return EXIT_INVALID
        return EXIT_UNAVAILABLE
    print(_report(token, args))
    return EXIT_OK


def kubeconfig_problem(exc: Exception) -> str:
    """One line for an unusable kubeconfig. The loader's messages name keys, files and
    contexts; a YAML error would quote the file's text, which may hold a token, so only
    its line number is kept."""
    import yaml

    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        detail = f"not valid YAML{f' at line {mark.line + 1}' if mark else ''}"
    else:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"no usable kubeconfig ({detail}); set KUBECONFIG, --kubeconfig or run in a cluster"


def load_cluster_config(kubeconfig: str | None, context: str | None) -> Any:
    """The cluster configuration, or a one-line :class:`UsageError`."""
    import kubernetes
    import yaml

    from itcare_operator.kube import load_config

    if kubeconfig and not Path(kubeconfig).is_file():
        raise UsageError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        return load_config(kubeconfig, context)
    except (kubernetes.config.ConfigException, yaml.YAMLError, OSError, ValueError) as exc:
        raise UsageError(kubeconfig_problem(exc)) from None


def check_kubeconfig(settings: Settings) -> None:
    """Load the cluster configuration once before starting, so that a missing kubeconfig
    or context is a usage error instead of a traceback from inside the operator."""
    load_cluster_config(settings.kubeconfig, settings.context)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    try:
        if args.command == "version":
            print(f"itcare-token-operator {__version__}")
            return EXIT_OK
        if args.command == "token":
            return cmd_token(args)
        settings = settings_from_args(args)
        check_kubeconfig(settings)
    except UsageError as exc:
        print(f"itcare-operator: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from itcare_operator.runner import run_operator

    return run_operator(settings)
