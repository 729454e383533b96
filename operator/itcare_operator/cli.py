"""``itcare-operator``: run the operator, check an API account, print the version.

The entry point only: the parser and settings live in :mod:`itcare_operator.cli_args`,
the one-shot commands in :mod:`itcare_operator.cli_token`. Their public names are
re-exported here because ``kubectl_plugin`` and the tests import them from ``cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from itcare_operator._version import __version__
from itcare_operator.cli_args import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_cluster_flags,
    add_token_arguments,
    build_parser,
    settings_from_args,
)
from itcare_operator.cli_token import (
    check_kubeconfig,
    cmd_token,
    credentials_from_args,
    kubeconfig_problem,
    load_cluster_config,
)

__all__ = [
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "add_cluster_flags",
    "add_token_arguments",
    "build_parser",
    "check_kubeconfig",
    "cmd_token",
    "credentials_from_args",
    "kubeconfig_problem",
    "load_cluster_config",
    "main",
    "settings_from_args",
]


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
