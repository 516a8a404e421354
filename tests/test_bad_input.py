"""Bad input as a new user gives it: one line naming the problem and the fix, exit code 2,
and nothing written; checkpoint readers raise one error type for any file whatsoever."""

from __future__ import annotations

import argparse
import io
import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from robust.attacks.anyattack import DecoderLoadError
from robust.attacks.anyattack import read_checkpoint as read_decoder
from robust.checkpoints import TRUST_PICKLE_ENV, CheckpointError
from robust.victims.albef import extract_state_dict
from robust.victims.albef import read_checkpoint as read_albef_checkpoint
from tests.cli_helpers import assert_one_line_error, invoke

UNSAFE_ADVICE = ("weights_only", "two options", "\x1b[")


class RunsShell:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its bytes, to show that a command wrote nothing."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_safe_advice(result) -> None:
    for fragment in UNSAFE_ADVICE:
        assert fragment not in result.output, result.output


@pytest.fixture
def untrusted(monkeypatch):
    """No trust in pickles, whatever the environment running the tests says."""
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)


def torch_bytes(payload, **save_options) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer, **save_options)
    return buffer.getvalue()


# -- 4, 5, 6: malicious and foreign pickles --------------------------------------------------


def test_trusted_file_the_safe_reader_cannot_check_still_loads(tmp_path, untrusted):
    path = tmp_path / "protocol4.pth"
    state = {"model": {"w": torch.arange(3.0)}}
    path.write_bytes(torch_bytes(state, _use_new_zipfile_serialization=False, pickle_protocol=4))
    with pytest.raises(CheckpointError, match="pickled with protocol 4, which the safe reader"):
        read_albef_checkpoint(path)
    loaded = read_albef_checkpoint(path, trust_pickle=True)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])


def decoder_namespace_pickle(path: Path) -> Path:
    """A decoder file that also pickles an argparse.Namespace (torch's "two options" case)."""
    torch.save({"decoder_state_dict": {}, "args": argparse.Namespace(lr=1)}, path)
    return path


@pytest.mark.parametrize(
    ("name", "make", "fragments"),
    [
        (
            "random.pt",
            lambda path: path.write_bytes(bytes(range(7, 240))),
            ("decoder file", "is not a PyTorch checkpoint", "pass the checkpoint file"),
        ),
        (
            "namespace.pt",
            decoder_namespace_pickle,
            ("was refused: it imports argparse.Namespace", "if you made this file yourself"),
        ),
        (
            "shell.pt",
            lambda path: torch.save({"x": RunsShell(path.with_name("code-ran"))}, path),
            ("was refused: it imports posix.system", "if you made this file yourself"),
        ),
        (
            "folder.pt",
            lambda path: path.mkdir(),
            ("is a folder, not a checkpoint file", "pass the checkpoint file inside it"),
        ),
    ],
)
def test_anyattack_load_of_bad_files_is_one_line(tmp_path, untrusted, name, make, fragments):
    path = tmp_path / name
    make(path)
    before = files_under(tmp_path)
    result = invoke("anyattack", "load", str(path), "--save-decoder", str(tmp_path / "copy.pt"))
    assert_one_line_error(result, str(path), *fragments)
    assert_safe_advice(result)
    assert files_under(tmp_path) == before
    assert not (tmp_path / "code-ran").exists()


# -- fuzz: checkpoint readers raise one error type for any file ------------------------------


def fuzz_files() -> list[tuple[str, bytes]]:
    """(file name, bytes): truncations of small valid files at every length, random bytes
    (some behind real magic numbers), text, and pickles of things that are not checkpoints."""
    rng = random.Random(0)
    state = {"model": {"w": torch.arange(4.0), "b": torch.zeros(2, dtype=torch.int64)}}
    valid = {
        "zip.pth": torch_bytes(state),
        "legacy.pth": torch_bytes(state, _use_new_zipfile_serialization=False),
        "weights.safetensors": safetensors_bytes(state["model"]),
    }
    cases = [(name, data[:length]) for name, data in valid.items() for length in range(len(data))]
    for index in range(60):
        blob = rng.randbytes(rng.randrange(1, 700))
        for prefix in (b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95"):
            cases.append((f"random{index}.pth", prefix + blob))
        cases.append((f"random{index}.safetensors", blob))
    texts = ["hello world\n", "", "{}", '{"model": {}}', "model:\n  w: [1, 2]\n", "é" * 40]
    cases += [(f"text{index}.pth", text.encode()) for index, text in enumerate(texts)]
    foreign = [
        [1, 2],
        None,
        "text",
        {"model": [1]},
        {"model": {"w": "not a tensor"}},
        {"decoder_state_dict": [1]},
        {"decoder_state_dict": {"w": 1}},
        {"args": argparse.Namespace(lr=1)},
        {"x": RunsShell(Path("fuzz-code-ran"))},
    ]
    for index, payload in enumerate(foreign):
        for protocol in (0, 2, 4, 5):
            cases.append((f"pickle{index}-{protocol}.pkl", pickle.dumps(payload, protocol)))
        cases.append((f"torch{index}.pth", torch_bytes(payload)))
    return cases


def safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def test_checkpoint_readers_raise_one_error_type_for_any_file(tmp_path, monkeypatch, untrusted):
    monkeypatch.chdir(tmp_path)  # where RunsShell's marker would appear
    readers = {
        "albef": (
            lambda path: extract_state_dict(read_albef_checkpoint(path), str(path)),
            CheckpointError,
        ),
        "anyattack": (read_decoder, DecoderLoadError),
    }
    cases = fuzz_files()
    assert len(cases) > 2000
    for index, (name, data) in enumerate(cases):
        path = tmp_path / f"{index}-{name}"
        path.write_bytes(data)
        for reader_name, (read, expected) in readers.items():
            try:
                read(path)
            except Exception as error:  # anything but the one expected type fails the test
                assert type(error) is expected, (reader_name, name, len(data), repr(error))
                message = str(error)
                assert "\n" not in message and str(path) in message, message
                assert not any(fragment in message for fragment in UNSAFE_ADVICE), message
            else:
                pytest.fail(f"{reader_name} read {name} ({len(data)} bytes) without an error")
        path.unlink()
    assert not (tmp_path / "fuzz-code-ran").exists()
