"""The refresh floor as the documents state it, from the code's constant.

``refresh_policy.DEFAULT_VOLUME_DELIVERY`` (``--volume-delivery-seconds``) is the one
source; each sentence below is written with it into the CRDs (what ``kubectl explain``
shows, and so docs/crd-reference.md), the README, the chart's values comment and the
docs. ``--check`` exits 1 when a sentence is missing or states another number.

    python scripts/delivery_floor.py          # rewrite (then: python scripts/crd_docs.py)
    python scripts/delivery_floor.py --check
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from itcare_operator.refresh_policy import DEFAULT_VOLUME_DELIVERY  # noqa: E402

CHART = ROOT / "charts" / "itcare-token-operator"
_CRD_SENTENCE = (
    "Never less than the operator flag --volume-delivery-seconds (default {floor} s), or half "
    "the lifetime for very short tokens, so the kubelet can deliver the new token; a "
    "smaller value is raised to it."
)
# (file, sentence with {floor}); whitespace in a file's copy may differ (line wrapping).
SENTENCES: list[tuple[Path, str]] = [
    *(
        (path, _CRD_SENTENCE)
        for name in (
            "itcarecredentials.itcare.cegedim.cloud.yaml",
            "clusteritcarecredentials.itcare.cegedim.cloud.yaml",
        )
        for path in (ROOT / "crds" / name, CHART / "files" / name)
    ),
    (ROOT / "docs" / "crd-reference.md", _CRD_SENTENCE),
    (ROOT / "README.md", "never later than {floor} s before expiry by default"),
    (ROOT / "docs" / "design.md", "never later than {floor} s before expiry by default"),
    (
        ROOT / "docs" / "metrics-and-alerts.md",
        "never less than the smaller of `--volume-delivery-seconds` (default {floor} s) "
        "and half the lifetime",
    ),
    (
        ROOT / "docs" / "consuming-tokens.md",
        "`--volume-delivery-seconds` before expiry (default {floor} s:",
    ),
    (CHART / "values.yaml", "volumeDeliverySeconds: {floor}"),
]


def floor() -> int:
    return int(DEFAULT_VOLUME_DELIVERY.total_seconds())


def _pattern(sentence: str) -> re.Pattern[str]:
    """The sentence with any number for ``{floor}`` (a word of its own) and any
    whitespace between words (a YAML or Markdown line break, a comment's ``#``)."""
    words = [r"(\d+)" if w == "{floor}" else re.escape(w) for w in sentence.split()]
    return re.compile(r"\s+(?:#\s+)?".join(words))


def problems() -> list[str]:
    out = []
    for path, sentence in SENTENCES:
        found = _pattern(sentence).findall(path.read_text())
        where = path.relative_to(ROOT)
        if not found:
            out.append(f"{where}: no sentence like {sentence.format(floor='N')!r}")
        out.extend(
            f"{where}: says {n} s, the code's floor is {floor()} s"
            for n in found
            if int(n) != floor()
        )
    return out


def rewrite() -> None:
    for path, sentence in SENTENCES:
        text = path.read_text()
        path.write_text(
            _pattern(sentence).sub(
                lambda m: (
                    m.group(0)[: m.start(1) - m.start(0)]
                    + str(floor())
                    + m.group(0)[m.end(1) - m.start(0) :]
                ),
                text,
            )
        )


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        bad = problems()
        for line in bad:
            print(line)
        return 1 if bad else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    rewrite()
    bad = problems()
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
