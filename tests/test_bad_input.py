"""Bad input as a new user gives it: one line naming the problem and the fix, exit code 2,
and nothing written; checkpoint readers raise one error type for any file whatsoever."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import sqlite3
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from robust.attacks.anyattack import DecoderLoadError
from robust.attacks.anyattack import read_checkpoint as read_decoder
from robust.attacks.patch_artifact import PatchArtifact, PatchFileError, load_patch, sidecar_path
from robust.checkpoints import TRUST_PICKLE_ENV, CheckpointError
from robust.harness.store import ResultStore, StoreError
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


def assert_one_line(result, *fragments: str) -> None:
    """The error line and nothing else: no blank line from a progress bar, no warnings."""
    assert_one_line_error(result, *fragments)
    assert len(result.output.splitlines()) == 1, repr(result.output)


def assert_safe_advice(result) -> None:
    for fragment in UNSAFE_ADVICE:
        assert fragment not in result.output, result.output


@pytest.fixture
def untrusted(monkeypatch):
    """No trust in pickles, whatever the environment running the tests says."""
    monkeypatch.delenv(TRUST_PICKLE_ENV, raising=False)


def albef_folder(folder: Path, checkpoint: bytes) -> Path:
    """An ALBEF checkpoint file with config.json and vocab.txt beside it, as the issue has."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nred\n")
    path = folder / "checkpoint.pth"
    path.write_bytes(checkpoint)
    return path


def torch_bytes(payload, **save_options) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer, **save_options)
    return buffer.getvalue()


def eval_albef(checkpoint: Path):
    """The issue's command: clean evaluation of an ALBEF checkpoint on five world images."""
    return invoke("eval", "--victim", f"albef:{checkpoint}", "--dataset", "world", "--limit", "5")


# -- 1, 2: checkpoints that are not checkpoints ----------------------------------------------


def test_text_file_as_albef_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = albef_folder(tmp_path / "albef", b"hello world\n")
    before = files_under(tmp_path)
    result = eval_albef(checkpoint)
    assert_one_line(
        result, str(checkpoint), "is not a PyTorch checkpoint", "b'hello wo'", "pass the"
    )
    assert files_under(tmp_path) == before  # no runs/eval store either


def test_truncated_pickle_as_albef_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start_of_a_pickle = pickle.dumps({"x": 123456, "y": 2}, protocol=2)[:20]
    checkpoint = albef_folder(tmp_path / "albef", start_of_a_pickle)
    before = files_under(tmp_path)
    result = eval_albef(checkpoint)
    assert_one_line(
        result,
        str(checkpoint),
        "cannot be read as a PyTorch checkpoint",
        "struct.error: unpack requires a buffer of 4 bytes",
        "download or save it again",
    )
    assert files_under(tmp_path) == before


# -- 3: patch sidecars -----------------------------------------------------------------------


def saved_patch(folder: Path) -> Path:
    patch = torch.rand(3, 11, 11, generator=torch.Generator().manual_seed(0))
    return PatchArtifact(patch, "toy-clip-vit", 64, 0.03, "fixed").save(folder / "b.png")


def edit_sidecar(png: Path, **changes) -> None:
    meta = json.loads(sidecar_path(png).read_text())
    sidecar_path(png).write_text(json.dumps(meta | changes))


def test_patch_sidecar_with_a_text_side_is_one_line(tmp_path):
    png = saved_patch(tmp_path)
    edit_sidecar(png, side="abc")
    before = files_under(tmp_path)
    out = tmp_path / "RUN"
    result = invoke("patch", "apply", str(png), "--dataset", "world", "--out", str(out))
    assert_one_line(
        result, "b.json", "'side' must be a positive whole number", '"abc"', "re-save the patch"
    )
    assert files_under(tmp_path) == before and not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("side", "abc", "a positive whole number"),
        ("side", 0, "a positive whole number"),
        ("side", True, "a positive whole number"),
        ("source_image_size", "64", "a positive whole number"),
        ("source_image_size", 64.5, "a positive whole number"),
        ("area_fraction", "0.03", "a number between 0 and 1"),
        ("area_fraction", 3, "a number between 0 and 1"),
        ("area_fraction", None, "a number between 0 and 1"),
        ("placement", "corner", "one of fixed, random"),
        ("placement", [], "one of fixed, random"),
        ("source", 7, "a victim name"),
        ("seed", -1, "a whole number >= 0"),
        ("seed", "zero", "a whole number >= 0"),
        ("config", [], "an object"),
        ("curve", "none", "a list of objects"),
        ("curve", [1, 2], "a list of objects"),
    ],
)
def test_every_sidecar_field_is_checked(tmp_path, field, value, fragment):
    png = saved_patch(tmp_path)
    edit_sidecar(png, **{field: value})
    with pytest.raises(PatchFileError) as raised:
        load_patch(png)
    message = str(raised.value)
    assert f"sidecar field {field!r} must be {fragment}" in message and "\n" not in message


# -- 4, 5, 6: malicious and foreign pickles --------------------------------------------------


MALICIOUS_FORMATS = {
    "zip": lambda payload: torch_bytes(payload),
    "legacy": lambda payload: torch_bytes(payload, _use_new_zipfile_serialization=False),
    "plain-pickle": lambda payload: pickle.dumps(payload, protocol=pickle.DEFAULT_PROTOCOL),
}


@pytest.mark.parametrize("form", sorted(MALICIOUS_FORMATS))
def test_malicious_albef_checkpoint_is_refused_without_unsafe_advice(
    tmp_path, monkeypatch, untrusted, form
):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code-ran"
    payload = {"model": {"w": torch.zeros(2)}, "args": RunsShell(marker)}
    checkpoint = albef_folder(tmp_path / "albef", MALICIOUS_FORMATS[form](payload))
    before = files_under(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = eval_albef(checkpoint)
    assert_one_line(
        result,
        str(checkpoint),
        "was refused: it imports posix.system when loaded",
        "if you made this file yourself",
        f"{TRUST_PICKLE_ENV}=1",
    )
    assert_safe_advice(result)
    torch_warnings = [str(w.message) for w in caught if "pickle protocol" in str(w.message)]
    assert not torch_warnings, torch_warnings
    assert not marker.exists() and files_under(tmp_path) == before


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
    assert_one_line(result, str(path), *fragments)
    assert_safe_advice(result)
    assert files_under(tmp_path) == before
    assert not (tmp_path / "code-ran").exists()


# -- 7: a matrix spec's files, before the first cell -----------------------------------------


def write_spec(folder: Path, open_clip_dir: Path, sources: list, attacks: list) -> Path:
    clip = {"name": "clip32", "spec": f"open_clip:local-dir:{open_clip_dir}"}
    spec = {
        "name": "bad-input",
        "dataset": "world:val",
        "limit": 4,
        "sources": [clip, *sources],
        "targets": [clip],
        "attacks": attacks,
        "batch_size": 4,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_matrix_with_missing_source_weights_fails_before_any_cell(tmp_path, tiny_open_clip_dir):
    gone = tmp_path / "albef-gone" / "checkpoint.pth"
    spec = write_spec(
        tmp_path,
        tiny_open_clip_dir,
        sources=[{"name": "gone", "spec": f"albef:{gone}"}],
        attacks=[{"name": "pgd", "params": {"eps": "2/255", "steps": 1}}],
    )
    before = files_under(tmp_path)
    result = invoke("matrix", str(spec), "--output-dir", str(tmp_path / "run"))
    assert_one_line(
        result, "weights for gone not found", str(gone), "download them", "$ROBUST_WEIGHTS"
    )
    assert files_under(tmp_path) == before and not (tmp_path / "run").exists()


def test_matrix_with_missing_masked_lm_fails_before_any_cell(tmp_path, tiny_open_clip_dir):
    no_mlm = tmp_path / "no-such-mlm"
    spec = write_spec(
        tmp_path,
        tiny_open_clip_dir,
        sources=[],
        attacks=[
            {"name": "pgd", "params": {"eps": "2/255", "steps": 1}},
            {"name": "bert_attack", "params": {"max_words": 1}, "mlm": str(no_mlm)},
        ],
    )
    before = files_under(tmp_path)
    result = invoke("matrix", str(spec), "--output-dir", str(tmp_path / "run"))
    assert_one_line(
        result, "attack 'bert_attack'", "masked LM", "not found", str(no_mlm), "download them"
    )
    assert files_under(tmp_path) == before and not (tmp_path / "run").exists()


def test_matrix_with_a_damaged_source_checkpoint_fails_before_any_cell(
    tmp_path, tiny_open_clip_dir
):
    checkpoint = albef_folder(tmp_path / "albef", b"hello world\n")
    spec = write_spec(
        tmp_path,
        tiny_open_clip_dir,
        sources=[{"name": "text", "spec": f"albef:{checkpoint}"}],
        attacks=[{"name": "pgd", "params": {"eps": "2/255", "steps": 1}}],
    )
    result = invoke("matrix", str(spec), "--output-dir", str(tmp_path / "run"))
    assert_one_line(result, str(checkpoint), "is not a PyTorch checkpoint")
    assert not (tmp_path / "run").exists()


# -- 8: the report only reads ----------------------------------------------------------------


def foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda path: path.touch(), ("is empty (0 bytes), not a results store", "delete it")),
        (
            lambda path: path.write_bytes(b"just some text\n"),
            ("not a vlp-robust results store (not an SQLite database)", "move this file away"),
        ),
        (foreign_sqlite, ("not a vlp-robust results store (no meta table)", "point at")),
    ],
)
def test_report_on_a_store_that_is_not_one_writes_nothing(tmp_path, make, fragments):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    make(run_dir / "results.sqlite")
    before = files_under(tmp_path)
    result = invoke("report", str(run_dir), "-o", str(tmp_path / "report.pdf"))
    assert_one_line(result, str(run_dir / "results.sqlite"), *fragments)
    assert files_under(tmp_path) == before


def test_read_only_store_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        run_id = store.start_run({"command": "eval"}, seeds={"world": 0})
    before = path.read_bytes()
    with ResultStore(path, read_only=True) as store:
        assert store.run_ids() == [run_id]
        with pytest.raises(StoreError, match="opened read-only"):
            store.start_run({"command": "eval"}, seeds={"world": 0})
    assert path.read_bytes() == before
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "absent.sqlite", read_only=True)
    assert not (tmp_path / "absent.sqlite").exists()


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
