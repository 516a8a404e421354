"""The suite outside its checkout: build the wheel, install it into a fresh virtual
environment in a temporary folder, and run the CLI there (shipped zoo, specs and prompts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("pyproject.toml", "README.md", "robust")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding only the built wheel; its dependencies come from this test
    environment's site-packages (a .pth line), so nothing is downloaded."""
    root = tmp_path_factory.mktemp("outside")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    wheels = root / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheels),
            str(source),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert "deprecated" not in built.stdout + built.stderr  # e.g. project.license as a table
    (wheel,) = wheels.glob("vlp_robust-*.whl")
    target = root / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            root,
            env,
        ).strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        root,
        env,
    )
    return target, env


def test_installed_wheel_runs_the_cli_outside_the_repository(installed, tmp_path):
    target, env = installed
    python, robust = target / "bin" / "python", target / "bin" / "robust"
    shipped = (
        "import robust, robust.demo as d, robust.resources as r; "
        "print(robust.__file__, d.MATRIX_SPEC, d.DEFENSE_SPEC, r.ZOO_DIR, sep='\\n')"
    )
    for path in run([str(python), "-c", shipped], tmp_path, env).split():
        assert Path(path).is_relative_to(target) and Path(path).exists(), path
    victims = run([str(robust), "victims"], tmp_path, env)
    assert (
        "toy-clip-vit" in victims
        and "missing" not in victims.split("toy-clip-vit")[1].split("\n")[0]
    )
    evaluated = run(
        [
            str(robust),
            "eval",
            "--victim",
            "toy-clip-vit",
            "--dataset",
            "world:test-1k",
            "--limit",
            "50",
            "--out",
            "runs/eval",
        ],
        tmp_path,
        env,
    )
    assert "toy-clip-vit" in evaluated and (tmp_path / "runs/eval/results.sqlite").is_file()
    assert "world-defense" in run([str(robust), "specs"], tmp_path, env)
    matrix = run(
        [str(robust), "matrix", "world-defense", "--limit", "4", "--output-dir", "runs/defense"],
        tmp_path,
        env,
    )
    assert "pgd-eps4" in matrix and (tmp_path / "runs/defense/results.sqlite").is_file()
