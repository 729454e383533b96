"""Read the ITCare token from the mounted Secret: re-read the file, never keep it for
the life of the process. Python 3.8+, standard library only."""

import hashlib
import os
import sys
import time
from pathlib import Path

TOKEN_DIR = Path(os.environ.get("ITCARE_TOKEN_DIR", "/var/run/itcare"))
_cached = (0.0, "")


def authorization(max_age: float = 5.0) -> str:
    """The Authorization header value, read again when the copy is older than max_age s."""
    global _cached
    read_at, value = _cached
    if not value or time.monotonic() - read_at > max_age:
        value = (TOKEN_DIR / "authorization").read_text().strip()
        _cached = (time.monotonic(), value)
    return value


if __name__ == "__main__":
    # Demo: once a second, print which token is in use (a fingerprint, never the token).
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 10**9):
        print(hashlib.sha256(authorization(max_age=0).encode()).hexdigest(), flush=True)
        time.sleep(1)
