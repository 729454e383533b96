"""The ``itcare-operator`` command line: its parser, and ``run``'s flags and
``ITCARE_OPERATOR_*`` variables turned into :class:`Settings`.

Kept apart from the commands so that parsing and settings precedence are tested
without any HTTP or Kubernetes client being imported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Callable
from typing import TypeVar

from itcare_operator.settings import DEFAULT_ALLOWED_TOKEN_URL, Settings
from itcare_operator.token import DEFAULT_TOKEN_URL
from itcare_operator.token_url import InvalidTokenURL, parse_prefix

__all__ = [
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_REJECTED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "UsageError",
    "add_cluster_flags",
    "add_token_arguments",
    "build_parser",
    "settings_from_args",
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


N = TypeVar("N", int, float)


# argparse names the converter function in its own "invalid <name> value" message;
# raising ArgumentTypeError gives the user our text after the flag's name instead.
def _checked(text: str, convert: Callable[[str], N], ok: Callable[[N], bool], what: str) -> N:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "a positive integer")


def _port(text: str) -> int:
    return _checked(text, int, lambda v: 0 <= v <= 65535, "a port number (0..65535, 0 disables)")


def _positive_float(text: str) -> float:
    return _checked(text, float, lambda v: v > 0, "a positive number")


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
