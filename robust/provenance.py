"""What every run records about where it ran, so a stored number can be traced and reproduced.

Everything here is best effort: a missing package, no git, no CUDA or an unreadable
/proc/meminfo yields None for that field, never an exception, because failing to describe the
machine must not stop an evaluation.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions decide results; always reported (None when not installed).
CORE_DISTRIBUTIONS: tuple[str, ...] = (
    "torch",
    "torchvision",
    "open_clip_torch",
    "transformers",
    "numpy",
    "torchattacks",  # the torchattacks attack kind and zero-shot APGD
)
# Reported only when installed: they matter (image decoding, weight files) but are optional.
OPTIONAL_DISTRIBUTIONS: tuple[str, ...] = ("pillow", "safetensors")

_GIT_TIMEOUT_S = 10.0


def collect_provenance(cwd: Path | None = None) -> dict[str, Any]:
    """Describe software versions, source revision and hardware for a run's record.

    `cwd` is the directory whose git repository is asked for the commit (default: the
    process's working directory). The result is JSON-serialisable.
    """
    git_commit, git_dirty = _git_state(Path.cwd() if cwd is None else Path(cwd))
    return {
        "versions": package_versions(),
        "git_commit": git_commit,
        "git_dirty": git_dirty,
        "hardware": hardware_info(),
    }


def package_versions() -> dict[str, str | None]:
    """Versions of Python, vlp-robust and the libraries whose behaviour changes results."""
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "vlp-robust": _own_version(),
    }
    for name in CORE_DISTRIBUTIONS:
        versions[name] = _distribution_version(name)
    for name in OPTIONAL_DISTRIBUTIONS:
        found = _distribution_version(name)
        if found is not None:
            versions[name] = found
    return versions


def hardware_info() -> dict[str, Any]:
    """The machine a run used: numerics and speed can depend on CPU/GPU and thread count."""
    info: dict[str, Any] = {
        "platform": _safe(platform.platform),
        "machine": _safe(platform.machine),
        "cpu_count": _safe(os.cpu_count),
        "torch_threads": None,
        "cuda_available": False,
        "cuda_version": None,
        "cuda_devices": [],
        "total_ram_bytes": _total_ram_bytes(),
    }
    try:
        import torch
    except Exception:  # torch absent or broken: report no accelerator
        return info
    info["torch_threads"] = _safe(torch.get_num_threads)
    info["cuda_version"] = _safe(lambda: torch.version.cuda)
    try:
        if torch.cuda.is_available():
            info["cuda_available"] = True
            info["cuda_devices"] = [
                torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())
            ]
    except Exception:  # a broken driver must not stop the run
        info["cuda_available"] = False
        info["cuda_devices"] = []
    return info


def _own_version() -> str | None:
    try:
        from robust import __version__
    except Exception:
        return _distribution_version("vlp-robust")
    return str(__version__)


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # malformed metadata counts as unknown
        return None


def _git_state(cwd: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree differs from it); (None, None) outside a repo."""
    commit = _run_git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return None, None
    status = _run_git(["status", "--porcelain"], cwd)
    return commit, (None if status is None else bool(status))


def _run_git(args: list[str], cwd: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()


def _total_ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    fields = line.split()
                    # The kernel reports kibibytes ("kB").
                    return int(fields[1]) * 1024
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    return None


def _safe(getter: Any) -> Any:
    try:
        return getter()
    except Exception:
        return None
