"""The Keycloak-compatible token server as a process the benchmark can steer.

    python -m bench.token_server --port P --generated-clients N --access-lifespan 120

Prints the token URL, then reads one command per line on stdin:

- ``lifespan S``: tokens issued from now on live S seconds (ITCare changing ``expires_in``);
- ``outage on`` / ``outage off``: every token request is answered 503 (the endpoint is
  down behind its load balancer) until ``outage off``.

Each command is acknowledged with ``ok`` on stdout. ``GET /_stats`` lists every request.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

from tests.keycloak_fake import FakeKeycloak, Fault

__all__ = ["main", "serve"]


def serve(server: FakeKeycloak, lines: Iterable[str], out: TextIO) -> None:
    """Apply the commands (stdin's lines) until they end; answer each on ``out``."""
    for line in lines:
        match line.split():
            case ["lifespan", seconds]:
                server.access_lifespan = int(seconds)
            case ["outage", "on"]:
                server.inject(Fault(status=503, body=b"Service Unavailable"))
            case ["outage", "off"]:
                server.clear_faults()
            case _:
                print(f"unknown command: {line.strip()}", file=out, flush=True)
                continue
        print("ok", file=out, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--generated-clients", type=int, required=True, metavar="N")
    parser.add_argument("--access-lifespan", type=int, required=True)
    args = parser.parse_args()
    server = FakeKeycloak(
        port=args.port, access_lifespan=args.access_lifespan, refresh_tokens=False
    )
    for i in range(args.generated_clients):
        server.add_client(f"bench-{i}", f"bench-secret-{i}")
    server.start()
    print(server.token_url, flush=True)
    try:
        serve(server, sys.stdin, sys.stdout)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
