"""Sampling profiles of the operator process with py-spy, summarised as Markdown.

``bench.run --profile`` records one profile while the credentials are created and one
during the refresh cycles; each is summarised per function (file and name, lines
merged): share of samples where the function is on top of the stack (self) and where
it is anywhere in it (total). Only the thread holding the GIL is sampled (``--gil``):
the shares are shares of the Python work; a thread waiting in a socket read, a
select or a lock (which py-spy may count as running) is not in them.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Profile:
    """``py-spy record`` attached to ``pid``, writing collapsed stacks to ``path``."""

    def __init__(self, pid: int, path: Path, rate: int = 100) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Path:
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(60)
        return self.path


def _where(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "itcare_operator/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file})"


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, count) per line of py-spy's collapsed stacks, thread frame dropped."""
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")[1:]  # [0] is the thread
        if frames and count_text.isdigit():
            yield frames, int(count_text)


def summarise(path: Path, top: int = 15) -> tuple[int, list[tuple[str, float, float]]]:
    """Samples and the ``top`` functions by self share: (function, self %, total %)."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    samples = 0
    for raw, count in _stacks(path):
        frames = [_where(f) for f in raw]
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            anywhere[name] += count
    rows = [
        (name, 100 * n / samples, 100 * anywhere[name] / samples)
        for name, n in own.most_common(top)
    ]
    return samples, rows


def by_module(path: Path) -> list[tuple[str, float]]:
    """Self share per top-level module (``itcare_operator``, ``kubernetes``, ...)."""
    own: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, count in _stacks(path):
        match = _FRAME.match(frames[-1])
        file = match["file"] if match else ""
        if "site-packages/" in file:
            module = file.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "itcare_operator/" in file:
            module = "itcare_operator"
        elif "lib/python3" in file:
            module = "stdlib"
        else:
            module = file or "?"
        own[module.removesuffix(".py")] += count
        samples += count
    return [(m, 100 * n / samples) for m, n in own.most_common(10)]


# Activities of the operator, by a frame on the stack: (label, marker in the frame).
ACTIVITIES = [
    ("reconcile (decide, refresh, write, status; incl. the token request)", "Reconciler.reconcile"),
    ("token requests (httpx)", "TokenEndpoint._send"),
    ("API requests (urllib3, in the request threads)", "KubeClient.request.<locals>.send"),
    ("kopf: watch streams (read, JSON decode)", "kopf/_cogs/clients/watching"),
    ("kopf: event processing (workers, handlers)", "kopf/_core/reactor/"),
    ("our watch intake (credential and Secret events)", "itcare_operator/registry.py"),
    ("metrics", "prometheus_client"),
    ("logging", "logging/__init__"),
]


def by_activity(path: Path) -> list[tuple[str, float]]:
    """Share of samples with the activity's frame anywhere on the stack."""
    hits: collections.Counter[str] = collections.Counter()
    samples = 0
    for frames, count in _stacks(path):
        samples += count
        for label, marker in ACTIVITIES:
            if any(marker in f for f in frames):
                hits[label] += count
    return [(label, 100 * hits[label] / samples) for label, _ in ACTIVITIES]


def markdown(title: str, path: Path, note: str = "") -> str:
    samples, rows = summarise(path)
    lines = [f"### {title}", "", f"{samples} samples at 100 Hz. {note}".strip(), ""]
    lines += ["| activity (frame on the stack) | % of samples |", "| --- | --- |"]
    lines += [f"| {label} | {share:.1f} |" for label, share in by_activity(path)]
    lines += ["", "| self % by module | |", "| --- | --- |"]
    lines += [f"| {m} | {share:.1f} |" for m, share in by_module(path)]
    lines += ["", "| function (file) | self % | total % |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {s:.1f} | {t:.1f} |" for name, s, t in rows]
    return "\n".join(lines) + "\n"
