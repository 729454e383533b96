"""Generate docs/troubleshooting.md from itcare_operator.troubleshooting.

python scripts/troubleshooting_docs.py          # rewrite
python scripts/troubleshooting_docs.py --check  # exit 1 when out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from itcare_operator.troubleshooting import (  # noqa: E402
    ALERTS,
    EVENTS,
    OPERATOR_FAILURES,
    REASONS,
    Entry,
)

OUT = ROOT / "docs" / "troubleshooting.md"

INTRO = """# Troubleshooting

Generated from `operator/itcare_operator/troubleshooting.py` by
`scripts/troubleshooting_docs.py`; `kubectl itcare status` prints the same entry for a
credential's reason.

Start with `kubectl itcare status NAMESPACE/NAME` (or `NAME` for a
ClusterITCareCredential): conditions, expiry, next refresh, and the last failure with
its entry below. Without the plugin: `kubectl get itccred` shows `Reason` (the
`Refreshed` reason when the latest refresh failed, else the `Ready` reason);
`kubectl describe itccred NAME` shows every condition with its message;
`kubectl get events` has one Warning event per failure streak (not per retry), with the
Refreshed reason. Events of a ClusterITCareCredential are in the `default` namespace.
"""


def section(title: str, entries: list[Entry], code: bool) -> str:
    parts = [f"## {title}\n"]
    for e in entries:
        name = f"`{e.name}`" if code else e.name
        parts.append(f"### {name}\n\n*{e.where}.*\n\n{e.meaning}\n\n**What to do:** {e.action}\n")
    return "\n".join(parts)


def render() -> str:
    return "\n".join(
        [
            INTRO,
            section("Condition reasons", list(REASONS.values()), code=True),
            section("Events", list(EVENTS.values()), code=True),
            section("Alerts", list(ALERTS), code=True),
            section(
                "Operator-level failures (logs and exit codes)", list(OPERATOR_FAILURES), False
            ),
        ]
    )


def main() -> int:
    content = render()
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != content:
            print("docs/troubleshooting.md is out of date: run scripts/troubleshooting_docs.py")
            return 1
        return 0
    OUT.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
