"""One source for the version and for the documented refresh floor (fast tier)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

import itcare_operator
from itcare_operator.refresh_policy import DEFAULT_VOLUME_DELIVERY

ROOT = Path(__file__).resolve().parent.parent


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_copy_of_the_version_agrees() -> None:
    release = script("release_version")
    assert release.version() == itcare_operator.__version__
    assert release.mismatches(itcare_operator.__version__) == []
    chart = yaml.safe_load((ROOT / "charts/itcare-token-operator/Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == itcare_operator.__version__
    for crd in (ROOT / "crds").glob("*.yaml"):
        annotations = yaml.safe_load(crd.read_text())["metadata"]["annotations"]
        assert annotations[release.ANNOTATION] == itcare_operator.__version__


def test_a_disagreeing_copy_is_reported() -> None:
    release = script("release_version")
    assert release.mismatches("9.9.9")  # every copy says the real version instead


def test_changelog_and_upgrading_have_the_version() -> None:
    version = itcare_operator.__version__
    assert f"## [{version}] - " in (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {version}\n" in (ROOT / "docs" / "upgrading.md").read_text()


def test_documented_floor_is_the_codes() -> None:
    floor = script("delivery_floor")
    assert floor.floor() == int(DEFAULT_VOLUME_DELIVERY.total_seconds())
    assert floor.problems() == []
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "delivery_floor.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_the_floor_check_sees_another_number() -> None:
    floor = script("delivery_floor")
    _, sentence = floor.SENTENCES[0]
    wrong = sentence.replace("{floor}", "60").replace(" ", "\n                  ", 3)
    assert floor._pattern(sentence).findall(f"description: >-\n  {wrong}\n") == ["60"]


def test_release_workflow_and_scripts_lint() -> None:
    """The release workflow cannot run here: actionlint checks it (with shellcheck on its
    run steps when shellcheck is installed), and shellcheck the publish script."""
    import os
    import shutil

    from tests.environment import CACHE, versions

    actionlint = CACHE / f"actionlint-{versions()['ACTIONLINT_VERSION']}" / "actionlint"
    if not actionlint.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise AssertionError(f"{actionlint} is not built: scripts/build-components actionlint")
        import pytest

        pytest.skip("actionlint is not built: scripts/build-components actionlint")
    proc = subprocess.run(
        [str(actionlint), ".github/workflows/release.yml"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if shutil.which("shellcheck"):
        proc = subprocess.run(
            [
                "shellcheck",
                "-x",
                "scripts/publish",
                "examples/consumers/shell/itcare-token.sh",
                "examples/consumers/env-wrapper/restart-on-token-change.sh",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout
