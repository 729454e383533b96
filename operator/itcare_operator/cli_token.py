"""The one-shot commands that need a cluster or the token endpoint: ``token``
(shared with ``kubectl itcare check``) and the kubeconfig checks before ``run``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from itcare_operator.cli_args import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_UNAVAILABLE,
    UsageError,
)
from itcare_operator.errors import (
    CredentialError,
    EndpointUnavailable,
    InvalidTokenResponse,
    RateLimited,
    Reason,
    RequestRejected,
    TokenEndpointError,
)
from itcare_operator.settings import Settings
from itcare_operator.token import ClientCredentials, Token, fingerprint, format_time
from itcare_operator.token_endpoint import TokenEndpoint, utcnow
from itcare_operator.token_url import InvalidTokenURL, is_loopback_http, split_url

__all__ = [
    "ApiServerUnreachable",
    "check_kubeconfig",
    "check_token_url",
    "cmd_token",
    "credentials_from_args",
    "kubeconfig_problem",
    "load_cluster_config",
]


class ApiServerUnreachable(UsageError):
    """The API server did not answer (network, TLS, timeout). ``itcare-operator token``
    reports it as a usage error (exit 2); ``kubectl itcare`` as unreachable (exit 4)."""


def check_token_url(url: str, *, insecure_http: bool = False) -> None:
    """A usage error, before any request, for a URL that cannot name an endpoint or
    would send the client secret in clear text: parsed as the operator parses a
    ``tokenURL`` (:func:`itcare_operator.token_url.split_url`: any scheme but https or
    http refused, the scheme compared case-insensitively), plain http only to a
    loopback host unless ``insecure_http``."""
    try:
        scheme, _host, _port, _path = split_url(url, "--token-url")
    except InvalidTokenURL as exc:
        raise UsageError(str(exc)) from None
    if scheme == "http" and not is_loopback_http(url) and not insecure_http:
        raise UsageError(
            "--token-url is plain http to a non-loopback host: the client secret would "
            "cross the network in clear text (use https, or --insecure-http to insist)"
        )


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
        import kubernetes.aio.config
        import yaml

        load_cluster_config(args.kubeconfig, args.context)  # usage errors before any call
        try:
            return read_credentials(
                namespace,
                name,
                args.client_id_key,
                args.client_secret_key,
                kubeconfig=args.kubeconfig,
                context=args.context,
            )
        except CredentialError as exc:
            raise UsageError(f"--from-secret {namespace}/{name}: {exc}") from None
        except (
            kubernetes.config.ConfigException,
            kubernetes.aio.config.ConfigException,
            yaml.YAMLError,
            OSError,
        ) as exc:
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
    check_token_url(args.token_url, insecure_http=args.insecure_http)
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

    from itcare_operator.kube_api import load_config

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


def read_credentials(
    namespace: str,
    name: str,
    client_id_key: str,
    client_secret_key: str,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> ClientCredentials:
    """For ``itcare-operator token --from-secret``: read an API account Secret now,
    through the operator's own client (``asyncio.run``)."""
    import asyncio

    from itcare_operator.kube import connect
    from itcare_operator.kube_api import KubeError
    from itcare_operator.source_secret import credentials_from_secret

    async def read() -> dict[str, Any] | None:
        kube = await connect(kubeconfig, context)
        try:
            return await kube.get_secret(namespace, name)
        finally:
            await kube.aclose()

    try:
        secret = asyncio.run(read())
    except KubeError as exc:
        if exc.status is None:  # no answer: network, TLS, timeout
            raise ApiServerUnreachable(str(exc)) from None
        raise CredentialError(str(exc), reason=Reason.SOURCE_SECRET_NOT_FOUND) from None
    return credentials_from_secret(
        secret,
        name=f"{namespace}/{name}",
        client_id_key=client_id_key,
        client_secret_key=client_secret_key,
        require_label=False,
    )
