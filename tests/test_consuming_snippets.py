"""The re-read snippets of docs/consuming-tokens.md (examples/consumers/), each run as
its language runs it, against a directory laid out as the kubelet writes a Secret
volume (files are symlinks through ``..data``, swapped atomically on an update): each
program must pick up a new token without a restart. The node tier runs the Python and
shell ones and the env-var wrapper in pods against a real Secret volume
(tests/consumer_pods.py, run by tests/test_registry.py)."""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONSUMERS = ROOT / "examples" / "consumers"
DOC = ROOT / "docs" / "consuming-tokens.md"
# An application that reads its token from the environment at start: it prints the
# fingerprint of ``Bearer $ITCARE_TOKEN`` once, then serves (sleeps).
ENV_APP = (
    'echo "start $(printf %s "Bearer $ITCARE_TOKEN" | sha256sum | cut -d" " -f1)"; exec sleep 600'
)


def write_volume(directory: Path, token: str) -> None:
    """What the kubelet's atomic writer does: a new timestamped directory, then one
    rename of the ``..data`` symlink; the visible names point through ``..data``."""
    files = {"access_token": token, "authorization": f"Bearer {token}", "token_type": "Bearer"}
    stamp = directory / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, value in files.items():
        (stamp / name).write_text(value)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(stamp.name)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    os.replace(tmp, directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    if old:
        shutil.rmtree(directory / old)


def fingerprint(token: str) -> str:
    return hashlib.sha256(f"Bearer {token}".encode()).hexdigest()


class Lines:
    """A process's stdout, line by line, with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines = proc, queue.Queue[str]()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def until(self, wanted: str, timeout: float) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if wanted in line:
                return seen
        raise AssertionError(f"no {wanted!r} within {timeout}s; saw {seen}")


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    directory = tmp_path / "itcare"
    directory.mkdir()
    write_volume(directory, "first-token")
    return directory


def command(language: str, tmp_path: Path) -> list[str]:
    if language == "python":
        return [sys.executable, str(CONSUMERS / "python" / "itcare_token.py")]
    if language == "shell":
        return ["sh", str(CONSUMERS / "shell" / "itcare-token.sh")]
    tool = {"go": "go", "java": "java", "node": "node"}[language]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    if language == "go":
        binary = tmp_path / "itcare-token"
        subprocess.run(
            ["go", "build", "-o", str(binary), "."],
            cwd=CONSUMERS / "go",
            check=True,
            env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"},
            timeout=300,
        )
        return [str(binary)]
    if language == "java":
        return ["java", str(CONSUMERS / "java" / "ItcareToken.java")]
    return ["node", str(CONSUMERS / "node" / "itcare-token.js")]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("language", ["python", "go", "java", "node", "shell"])
def test_snippet_rereads_the_volume(
    language: str, volume: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    proc = subprocess.Popen(
        [*command(language, tmp_path), "30"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ITCARE_TOKEN_DIR": str(volume)},
    )
    started.append(proc)
    lines = Lines(proc)
    lines.until(fingerprint("first-token"), 60)  # the JVM and Go start slowly here
    write_volume(volume, "second-token")
    lines.until(fingerprint("second-token"), 5)
    assert not any("token" in line for line in lines.until(fingerprint("second-token"), 5))


def test_env_wrapper_restarts_only_the_process(
    volume: Path, started: list[subprocess.Popen[str]]
) -> None:
    app = ENV_APP
    proc = subprocess.Popen(
        ["sh", str(CONSUMERS / "env-wrapper" / "restart-on-token-change.sh"), "sh", "-c", app],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ITCARE_TOKEN_DIR": str(volume), "CHECK_SECONDS": "1"},
    )
    started.append(proc)
    lines = Lines(proc)
    lines.until(f"start {fingerprint('first-token')}", 10)
    write_volume(volume, "second-token")
    lines.until(f"start {fingerprint('second-token')}", 10)
    assert proc.poll() is None, "the wrapper itself must keep running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_the_document_shows_each_snippet() -> None:
    """The snippets in docs/consuming-tokens.md are these files, not copies that drift."""
    doc = DOC.read_text()
    for path in (
        CONSUMERS / "python" / "itcare_token.py",
        CONSUMERS / "go" / "main.go",
        CONSUMERS / "java" / "ItcareToken.java",
        CONSUMERS / "node" / "itcare-token.js",
        CONSUMERS / "shell" / "itcare-token.sh",
        CONSUMERS / "env-wrapper" / "restart-on-token-change.sh",
    ):
        assert f"`examples/consumers/{path.relative_to(CONSUMERS)}`:" in doc
        assert path.read_text() in doc, f"{path.name}: the document's copy differs"
