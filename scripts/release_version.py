"""One version for the package, the image, the chart and the CRDs.

The source is ``operator/itcare_operator/_version.py``; this script writes it into the
chart's ``version`` and ``appVersion``, the Dockerfile's default ``VERSION`` label and the
``itcare.cegedim.cloud/version`` annotation of both CRDs (and their chart copies).

    python scripts/release_version.py            # print the version
    python scripts/release_version.py --check    # exit 1 when a copy disagrees
    python scripts/release_version.py set 0.3.0  # change the source and every copy
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "operator" / "itcare_operator" / "_version.py"
CHART = ROOT / "charts" / "itcare-token-operator" / "Chart.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
CRD_COPIES = [ROOT / "charts" / "itcare-token-operator" / "files" / p.name for p in CRDS]
ANNOTATION = "itcare.cegedim.cloud/version"
SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")

# (file, pattern whose group 2 is the version, replacement template)
_SOURCE_RE = re.compile(r'^(__version__ = ")([^"]+)(")$', re.M)
_CHART_VERSION_RE = re.compile(r"^(version: )(\S+)()$", re.M)
_CHART_APP_RE = re.compile(r'^(appVersion: ")([^"]+)(")$', re.M)
_DOCKER_RE = re.compile(r"^(ARG VERSION=)(\S+)()$", re.M)
_CRD_RE = re.compile(rf'^(    {re.escape(ANNOTATION)}: ")([^"]+)(")$', re.M)


def version() -> str:
    found = _SOURCE_RE.search(SOURCE.read_text())
    if not found:
        raise SystemExit(f"no __version__ in {SOURCE}")
    return found.group(2)


def _targets() -> list[tuple[Path, re.Pattern[str]]]:
    return [
        (CHART, _CHART_VERSION_RE),
        (CHART, _CHART_APP_RE),
        (DOCKERFILE, _DOCKER_RE),
        *((path, _CRD_RE) for path in [*CRDS, *CRD_COPIES]),
    ]


def mismatches(expected: str) -> list[str]:
    """Every copy that does not say ``expected`` (file and what it says)."""
    out = []
    for path, pattern in _targets():
        found = pattern.search(path.read_text())
        got = found.group(2) if found else None
        if got != expected:
            out.append(f"{path.relative_to(ROOT)}: {got or 'missing'} (expected {expected})")
    return out


def write(new: str) -> None:
    if not SEMVER.match(new):
        raise SystemExit(f"{new!r} is not a semantic version")
    for path, pattern in [(SOURCE, _SOURCE_RE), *_targets()]:
        text = path.read_text()
        if not pattern.search(text):
            raise SystemExit(f"{path.relative_to(ROOT)}: no version line to replace")
        path.write_text(pattern.sub(lambda m: f"{m.group(1)}{new}{m.group(3)}", text, count=1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["set"] and len(argv) == 2:
        write(argv[1])
        return 0
    if argv == ["--check"]:
        bad = mismatches(version())
        for line in bad:
            print(line)
        if bad:
            print("run: python scripts/release_version.py set", version())
        return 1 if bad else 0
    if not argv:
        print(version())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
