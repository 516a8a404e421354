"""Reading checkpoint files without running their code; every bad file is one clear line.

Files load with `torch.load(weights_only=True)` first, which refuses pickles that import
anything beyond tensors and plain containers (and pickle protocols 4 and 5 altogether). A
refused file is reported by what it tries to import, found by reading its pickle opcode by
opcode without running it, and loads with full pickle only when the caller says it is
trusted. Torch's own messages are never passed on whole: they advise `weights_only=False`,
which a tool that cannot vouch for a file must not do, and they span lines and carry colour
codes.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from robust.errors import RobustError

TRUST_PICKLE_ENV = "ROBUST_TRUST_PICKLE"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
PICKLE_MAGIC = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 and later
# The legacy format pickled with protocol 0 or 1 starts with torch's magic number as text.
LEGACY_TEXT_MAGIC = b"L" + str(0x1950A86A20F9469CFC6C).encode()
TAR_MAGIC, TAR_MAGIC_OFFSET = b"ustar", 257  # torch's oldest format is a tar archive
SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_LENGTH_BYTES = 8  # a little-endian header length, then the JSON header
HEAD_BYTES = 512
MAX_REASON_CHARS = 160
# torch 2.6-2.13: "Unsupported global: GLOBAL argparse.Namespace was not an allowed global";
# torch 2.14: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked".
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL ([\w.]+)")
# Lines of torch's messages that give advice rather than say what is wrong.
_TORCH_ADVICE = re.compile(
    r"weights.only|safe_globals|trust|torch\.load|file an issue|documentation|two options",
    re.IGNORECASE,
)
_ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Imports every torch checkpoint makes; the refusal names the first import beyond these.
EXPECTED_IMPORTS = ("torch.", "collections.OrderedDict", "_codecs.encode")
STRING_OPCODES = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
LEGACY_PICKLES = 4  # the legacy format: magic number, protocol version, system info, object


class CheckpointError(RobustError):
    """A checkpoint file that is missing, unreadable, damaged or refused as unsafe."""


def trust_pickle_from_env() -> bool:
    """Whether the user set $ROBUST_TRUST_PICKLE, the trust flag of spec strings and the CLI."""
    return os.environ.get(TRUST_PICKLE_ENV, "") not in ("", "0", "false")


def check_checkpoint_file(path: Path | str) -> Path:
    """`path` if it is a readable file that starts like a checkpoint; one error line if not.

    Reads only the first bytes, so runs can check every file they will need before any work.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file; pass the checkpoint file inside it"
        )
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError as error:
        raise CheckpointError(
            f"{path} cannot be read ({error.strerror or error}); check its permissions"
        ) from None
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); download or save it again")
    if path.suffix == SAFETENSORS_SUFFIX:
        if head[SAFETENSORS_LENGTH_BYTES : SAFETENSORS_LENGTH_BYTES + 1] != b"{":
            raise CheckpointError(
                f"{path} is not a safetensors file (it starts with {head[:8]!r}, not a header "
                "length and a JSON header); download or save it again"
            )
    elif not _starts_like_torch_file(head):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: it starts with {head[:8]!r}, not with a zip "
            "archive or a pickle as torch.save writes; pass the checkpoint file itself"
        )
    return path


def _starts_like_torch_file(head: bytes) -> bool:
    """Whether a file's first bytes are those of some format torch.save has written."""
    return (
        head.startswith((ZIP_MAGIC, PICKLE_MAGIC))
        or LEGACY_TEXT_MAGIC.startswith(head[: len(LEGACY_TEXT_MAGIC)])
        or head[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC
    )


def read_torch_file(path: Path | str, *, trust_pickle: bool = False) -> Any:
    """The contents of a `.pth`/`.pt`/`.bin` (weights-only unless trusted) or `.safetensors`
    file. Every failure, whatever torch raises, is one `CheckpointError` line."""
    path = check_checkpoint_file(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses
            warnings.simplefilter("ignore")
            return _torch_load(path, weights_only=True)
    except Exception as error:  # torch's readers raise many types for damaged files
        refusal = _refusal(path, error)
        if refusal is None:
            raise _damaged(path, error) from None
        if not trust_pickle:
            raise CheckpointError(
                f"{path} was refused: {refusal}, and an unchecked pickle can run any code (only "
                "tensors and plain containers load unchecked); if you made this file yourself "
                f"and trust it, set {TRUST_PICKLE_ENV}=1 (trust_pickle=True in Python) to load it"
            ) from None
    try:
        return _torch_load(path, weights_only=False)
    except Exception as error:  # any unpickling failure of a trusted file
        raise _damaged(path, error) from None


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=weights_only)


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several types for bad files
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({torch_reason(error)}); download or "
            "save it again"
        ) from None


def _refusal(path: Path, error: Exception) -> str | None:
    """Why the weights-only reader refused an intact file (it imports something, or uses a
    pickle protocol that reader cannot check), or None when the file is damaged."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    scan = scan_pickle(path)
    if scan is None:  # the pickle itself is broken
        return None
    protocol, imports = scan
    named = _REFUSED_GLOBAL.search(str(error))
    unusual = [name for name in imports if not name.startswith(EXPECTED_IMPORTS)]
    refused = named.group(1) if named else (unusual[0] if unusual else None)
    if refused is not None:
        return f"it imports {refused} when loaded"
    return f"it is pickled with protocol {protocol}, which the safe reader cannot check"


def scan_pickle(path: Path) -> tuple[int, list[str]] | None:
    """(protocol, imported `module.name`s) of a torch file's object pickle, read opcode by
    opcode with pickletools, which never runs anything; None if the pickle is not whole."""
    try:
        with warnings.catch_warnings():  # pickletools warns about odd escapes in old pickles
            warnings.simplefilter("ignore")
            return _scan_file(path)
    except Exception:  # a damaged archive or pickle: the caller reports the file as damaged
        return None


def _scan_file(path: Path) -> tuple[int, list[str]]:
    """The object pickle of a zip-format file, or the first pickles of a legacy-format one."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            return _scan_pickles(io.BytesIO(archive.read(member)), count=1)
    with open(path, "rb") as handle:
        return _scan_pickles(handle, count=LEGACY_PICKLES)


def _scan_pickles(stream: BinaryIO, count: int) -> tuple[int, list[str]]:
    """Scan up to `count` pickles in a row (fewer when the stream ends between two)."""
    protocol, imports = 0, []
    for index in range(count):
        start = stream.tell()
        if index > 0 and not stream.read(1):
            break
        stream.seek(start)
        recent: list[str] = []  # strings pushed so far: STACK_GLOBAL takes module and name
        memo: dict[int, str | None] = {}
        pushed: str | None = None  # the string the previous opcode pushed, if any
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name == "PROTO":
                protocol = max(protocol, int(arg))
            elif name in ("GLOBAL", "INST"):
                imports.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(recent) >= 2:
                imports.append(f"{recent[-2]}.{recent[-1]}")
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed
            elif name in ("GET", "BINGET", "LONG_BINGET") and memo.get(int(arg)) is not None:
                recent.append(str(memo[int(arg)]))
            pushed = str(arg) if name in STRING_OPCODES else None
            if pushed is not None:
                recent.append(pushed)
    return protocol, imports


def _damaged(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} cannot be read as a PyTorch checkpoint ({torch_reason(error)}): the file is "
        "damaged, incomplete or not written by torch.save; download or save it again"
    )


def torch_reason(error: Exception) -> str:
    """What went wrong, in one short line: the first line of `error` that is not advice."""
    kind = type(error).__name__
    if kind == "error":  # struct.error, zlib.error: the module says what kind
        kind = f"{type(error).__module__}.error"
    for line in _ANSI_CODE.sub("", str(error)).splitlines():
        line = line.rpartition("WeightsUnpickler error:")[2].strip()
        if line and not _TORCH_ADVICE.search(line):
            if len(line) > MAX_REASON_CHARS:
                line = line[: MAX_REASON_CHARS - 3] + "..."
            return f"{kind}: {line}"
    return f"{kind}: the file ends too early" if isinstance(error, EOFError) else kind
