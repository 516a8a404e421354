"""What a report shows, read from a run directory's stores and caches into plain dataclasses.

Every `results.sqlite` under the run directory is read (a demo keeps its clean evaluation and
its matrix in separate stores), and every complete adversarial-cache entry's manifest. Rows
are read through `robust.harness.results` (white-box cells, headline scoring, the defense
table). No model is ever loaded, nor torch imported: a report can be built anywhere the run
directory is readable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from robust.errors import RobustError
from robust.harness.cache import AdversarialCache, CacheError
from robust.harness.calibration import CALIBRATION_FILENAME
from robust.harness.results import (
    ANYATTACK_ORACLE,
    CACHE_DIRNAME,
    ORACLE_STEP_METRIC,
    DefenseRow,
    MatrixLayout,
    defense_table,
    headline_scoring,
)
from robust.harness.store import STORE_FILENAME, MetricRow, ResultStore

PATCH_EVAL: Final[str] = "patch-eval"  # the `command` a patch evaluation's spec records
ANYATTACK_EVAL: Final[str] = "anyattack eval"
ANYATTACK_BOUND: Final[str] = "anyattack bound"
BIAS_CAPTION: Final[str] = "bias caption"
ZEROSHOT: Final[str] = "zeroshot"  # robust.harness.zeroshot.COMMAND
ZEROSHOT_SCORING: Final[str] = "zero-shot:"  # robust.harness.zeroshot.SCORING_PREFIX
BIAS_KINDS: Final[frozenset[str]] = frozenset({"bias cache", "bias pairs", BIAS_CAPTION})


class ReportDataError(RobustError):
    """A run directory that holds nothing a report can be built from."""


@dataclass(frozen=True)
class RunRecord:
    """One run as its store recorded it when it started: spec, seeds and provenance."""

    store: str
    run_id: int
    created_at: str
    kind: str
    name: str
    spec: dict[str, Any]
    seeds: dict[str, Any]
    versions: dict[str, Any]
    git_commit: str | None
    git_dirty: bool | None
    hardware: dict[str, Any]

    @property
    def key(self) -> str:
        """How the report names this run: its store (relative to the run dir) and id."""
        return f"{self.store}#{self.run_id}"


@dataclass(frozen=True)
class AttackInfo:
    """An attack as the spec configured it; `label` is unique within the report."""

    label: str
    name: str
    params: dict[str, Any]
    mlm: str | None
    run: str

    @property
    def eps(self) -> float | None:
        """The L-inf image budget in [0, 1] units, for attacks that perturb images."""
        value = self.params.get("eps")
        return None if value is None else float(value)


@dataclass(frozen=True)
class CleanScore:
    """Clean retrieval of one victim; `preprocessed_as` names the matrix source whose
    resolution the images were brought to (None for a stand-alone evaluation)."""

    victim: str
    dataset: str
    split: str
    scoring: str
    preprocessed_as: str | None
    metrics: dict[str, float]
    run: str


@dataclass(frozen=True)
class TransferScore:
    """Retrieval of `target` on adversarial examples crafted by `attack` on `source`."""

    attack: str
    seed: int | None
    source: str
    target: str
    dataset: str
    split: str
    scoring: str
    white_box: bool
    metrics: dict[str, float]
    run: str


@dataclass(frozen=True)
class DefendedScore:
    """Retrieval of a victim behind a defense, clean (`attack` None) or under attack."""

    defense: str
    victim: str
    attack: str | None
    source: str | None
    scoring: str
    metrics: dict[str, float]
    run: str


@dataclass(frozen=True)
class PatchScore:
    """One task of a universal-patch evaluation on `target`: clean (`attack` None), the
    patch ("advclip-patch") or its random-patch control."""

    target: str
    attack: str | None
    source: str | None
    scoring: str
    metrics: dict[str, float]
    run: str


@dataclass(frozen=True)
class PatchRun:
    """A `robust patch eval` run; its patch, control and examples lie under `folder`."""

    run: str
    folder: Path
    source: str
    targets: tuple[str, ...]
    dataset: str
    patch: dict[str, Any]


@dataclass(frozen=True)
class AnyAttackRun:
    """A `robust anyattack eval` run; its example quadruples lie under `folder`."""

    run: str
    folder: Path
    encoder: str
    eps: float | None
    pairs: int | None
    dataset: str
    victims: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class OracleRun:
    """A `robust anyattack bound` run: the clean-independent noise oracle optimised white-box
    on `victim` for the first `optimised` of `pairs` seeded pairs. `tr_r1` holds its floor,
    oracle and ceiling targeted TR R@1 on those pairs, `by_step` the oracle's TR R@1 after
    each recorded step count."""

    run: str
    victim: str
    dataset: str
    pairs: int | None
    optimised: int | None
    steps: int | None
    eps: float | None
    seed: int | None
    tr_r1: dict[str, float]
    by_step: dict[int, float]

    def scores_pairs_of(self, run: AnyAttackRun) -> bool:
        """Whether this oracle drew the same pairs as `run` (dataset, count and pairing seed)
        at the same budget, so its score reads against that run's decoder."""
        if self.eps is None or run.eps is None:
            same_budget = self.eps is run.eps
        else:
            same_budget = math.isclose(self.eps, run.eps)
        same_draw = (self.dataset, self.pairs, self.seed) == (run.dataset, run.pairs, run.seed)
        return same_draw and same_budget


@dataclass(frozen=True)
class AnyAttackScore:
    """Targeted metrics of one victim on AnyAttack's adversarial images (see
    `robust.harness.anyattack_eval` for the metric names)."""

    victim: str
    encoder: str | None
    metrics: dict[str, float]
    run: str


@dataclass(frozen=True)
class DefenseSummary:
    """A matrix run's defense table (`robust defenses show`): one row per (defense, attack,
    source, target) at the target's headline scoring, seeds averaged."""

    run: str
    dataset: str
    split: str
    adaptive: bool
    rows: tuple[DefenseRow, ...]


@dataclass(frozen=True)
class BiasScore:
    """One bias measurement: relevance bias of `victim` between image sources A and B
    (`kind` "relevance"), or what B's images do to a captioner's captions ("caption")."""

    kind: str
    victim: str
    attack: str | None
    source: str | None
    dataset: str
    split: str
    sources: dict[str, str]
    target_concept: str | None
    metrics: dict[str, float]
    run: str


@dataclass(frozen=True)
class ZeroShotScore:
    """Zero-shot accuracy of `victim` on `task`, clean (`attack` None) or under an attack
    label such as `apgd-ce@eps=2/255`."""

    victim: str
    task: str
    attack: str | None
    accuracy: float
    images: float
    run: str


@dataclass(frozen=True)
class ZeroShotRun:
    """A `robust zeroshot` run: its dataset, attack labels in column order, APGD steps."""

    run: str
    dataset: str
    labels: tuple[str, ...]
    steps: int | None


@dataclass(frozen=True)
class CachedAttack:
    """A complete adversarial-cache entry: the attack's full config() as it crafted."""

    attack: str
    source: str
    seed: int
    num_images: int
    image_size: int
    config: dict[str, Any]
    path: str


@dataclass(frozen=True)
class WorldCalibration:
    """A `robust zoo calibrate` record under the run directory (`record` is its JSON), or
    why it could not be read (`problem`), so one broken file costs only its own table."""

    path: str
    record: dict[str, Any]
    problem: str | None = None


@dataclass
class ReportData:
    """Everything the report draws from, merged over all stores of one run directory."""

    run_dir: Path
    runs: list[RunRecord] = field(default_factory=list)
    attacks: dict[str, AttackInfo] = field(default_factory=dict)
    clean: list[CleanScore] = field(default_factory=list)
    transfer: list[TransferScore] = field(default_factory=list)
    defended: list[DefendedScore] = field(default_factory=list)
    defense_summaries: list[DefenseSummary] = field(default_factory=list)
    bias: list[BiasScore] = field(default_factory=list)
    anyattack_runs: list[AnyAttackRun] = field(default_factory=list)
    anyattack: list[AnyAttackScore] = field(default_factory=list)
    oracles: list[OracleRun] = field(default_factory=list)
    patch_runs: list[PatchRun] = field(default_factory=list)
    patch: list[PatchScore] = field(default_factory=list)
    zeroshot_runs: list[ZeroShotRun] = field(default_factory=list)
    zeroshot: list[ZeroShotScore] = field(default_factory=list)
    cached: list[CachedAttack] = field(default_factory=list)
    calibrations: list[WorldCalibration] = field(default_factory=list)

    def attack_labels(self) -> list[str]:
        """Attacks with transfer results, in spec order."""
        present = {score.attack for score in self.transfer}
        return [label for label in self.attacks if label in present]

    def oracle_for(self, run: AnyAttackRun, victim: str) -> OracleRun | None:
        """The latest oracle run on `victim` over `run`'s pairs, if the input holds one."""
        found = [o for o in self.oracles if o.victim == victim and o.scores_pairs_of(run)]
        return found[-1] if found else None


def find_stores(run_dir: Path) -> list[Path]:
    """Every results store under `run_dir`, shallowest first, so the top-level one leads."""
    found = [path for path in run_dir.rglob(STORE_FILENAME) if path.is_file()]
    return sorted(found, key=lambda path: (len(path.relative_to(run_dir).parts), str(path)))


def load_report_data(run_dir: Path | str) -> ReportData:
    """Read every store and cache under `run_dir`; a clear error if there is nothing to show."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportDataError(
            f"{run_dir} is not a directory; pass the run directory written by "
            "`robust matrix`, `robust eval` or `robust demo`"
        )
    stores = find_stores(run_dir)
    if not stores:
        raise ReportDataError(
            f"no {STORE_FILENAME} under {run_dir}; pass the run directory written by "
            "`robust matrix`, `robust eval` or `robust demo`"
        )
    data = ReportData(run_dir=run_dir)
    for path in stores:
        with ResultStore(path, read_only=True) as store:
            _read_store(data, store, path.relative_to(run_dir).as_posix())
        cache_root = path.parent / CACHE_DIRNAME
        if cache_root.is_dir():
            data.cached.extend(_read_cache(cache_root, run_dir))
    if not data.runs:
        raise ReportDataError(
            f"the results stores under {run_dir} hold no runs; finish a run "
            "(`robust matrix SPEC` resumes an interrupted one) before building a report"
        )
    data.calibrations = _read_calibrations(run_dir)
    return data


def _read_calibrations(run_dir: Path) -> list[WorldCalibration]:
    """Every calibration record under `run_dir`, shallowest first."""
    found = sorted(
        run_dir.rglob(CALIBRATION_FILENAME),
        key=lambda path: (len(path.relative_to(run_dir).parts), str(path)),
    )
    calibrations = []
    for path in found:
        relative = path.relative_to(run_dir).as_posix()
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("its top level is not a JSON object")
        except (OSError, ValueError) as error:
            problem = (
                f"{relative} could not be read ({error}); rewrite it with `robust zoo calibrate`"
            )
            calibrations.append(WorldCalibration(relative, {}, problem))
            continue
        calibrations.append(WorldCalibration(relative, record))
    return calibrations


def _read_store(data: ReportData, store: ResultStore, relative: str) -> None:
    for run_id in store.run_ids():
        run = _run_record(store.run_info(run_id), relative)
        data.runs.append(run)
        if run.kind == PATCH_EVAL:
            _read_patch_run(data, store, run, data.run_dir / Path(relative).parent)
            continue
        if run.kind == ANYATTACK_EVAL:
            _read_anyattack_run(data, store, run, data.run_dir / Path(relative).parent)
            continue
        if run.kind == ANYATTACK_BOUND:
            _read_oracle_run(data, store, run)
            continue
        if run.kind in BIAS_KINDS:
            _read_bias_run(data, store, run)
            continue
        if run.kind == ZEROSHOT:
            _read_zeroshot_run(data, store, run)
            continue
        labels = _register_attacks(data, run)
        white_box = _white_box_pairs(run.spec.get("spec") or {})
        grouped = _group_rows(store.metrics(run_id))
        for key, metrics in grouped.items():
            victim, dataset, split, attack, seed, source, _, defense, scoring = key
            if defense is not None:
                data.defended.append(
                    DefendedScore(defense, victim, attack, source, scoring, metrics, run.key)
                )
            elif attack is None:
                data.clean.append(
                    CleanScore(victim, dataset, split, scoring, source, metrics, run.key)
                )
            elif source is not None:
                data.transfer.append(
                    TransferScore(
                        attack=labels.get(attack, attack),
                        seed=seed,
                        source=source,
                        target=victim,
                        dataset=dataset,
                        split=split,
                        scoring=scoring,
                        white_box=(source, victim) in white_box,
                        metrics=metrics,
                        run=run.key,
                    )
                )
        _read_defense_summary(data, store, run, grouped)


def _read_patch_run(data: ReportData, store: ResultStore, run: RunRecord, folder: Path) -> None:
    """A patch evaluation's rows are its own section's, never clean or transfer cells."""
    spec = run.spec
    data.patch_runs.append(
        PatchRun(
            run=run.key,
            folder=folder,
            source=str(spec.get("patch", {}).get("source", "?")),
            targets=tuple(spec.get("targets", [])),
            dataset=str(spec.get("dataset", "?")),
            patch=dict(spec.get("patch", {})),
        )
    )
    for key, metrics in _group_rows(store.metrics(run.run_id)).items():
        victim, _, _, attack, _, source, _, _, scoring = key
        data.patch.append(PatchScore(victim, attack, source, scoring, metrics, run.key))


def _read_anyattack_run(data: ReportData, store: ResultStore, run: RunRecord, folder: Path) -> None:
    """AnyAttack's targeted rows are its own section's, never transfer cells."""
    spec = run.spec
    attack = spec.get("attack", {})
    eps = attack.get("eps")
    data.anyattack_runs.append(
        AnyAttackRun(
            run=run.key,
            folder=folder,
            encoder=str(attack.get("encoder", "?")),
            eps=None if eps is None else float(eps),
            pairs=_optional_int(spec.get("pairs")),
            dataset=str(spec.get("dataset", "?")),
            victims=tuple(spec.get("victims", [])),
            seed=_optional_int(run.seeds.get("pairs")),
        )
    )
    for key, metrics in _group_rows(store.metrics(run.run_id)).items():
        victim, _, _, _, _, source, _, _, _ = key
        data.anyattack.append(AnyAttackScore(victim, source, metrics, run.key))


_STEP_PATTERN: Final[re.Pattern[str]] = re.compile(ORACLE_STEP_METRIC.format(r"(\d+)"))


def _read_oracle_run(data: ReportData, store: ResultStore, run: RunRecord) -> None:
    """The noise oracle's rows are the AnyAttack section's, never transfer cells."""
    spec = run.spec
    rows = [row for row in store.metrics(run.run_id) if row.attack == ANYATTACK_ORACLE]
    tr_r1, by_step = {}, {}
    for row in rows:
        step = _STEP_PATTERN.fullmatch(row.metric)
        if step:
            by_step[int(step.group(1))] = row.value
        elif row.metric.endswith("_tr_r1"):
            tr_r1[row.metric.removesuffix("_tr_r1")] = row.value
    eps = spec.get("eps")
    data.oracles.append(
        OracleRun(
            run=run.key,
            victim=str(spec.get("encoder", rows[0].victim if rows else "?")),
            dataset=str(spec.get("dataset", "?")),
            pairs=_optional_int(spec.get("pairs")),
            optimised=_optional_int(spec.get("optimised")),
            steps=_optional_int(spec.get("steps")),
            eps=None if eps is None else float(eps),
            seed=_optional_int(run.seeds.get("pairs")),
            tr_r1=tr_r1,
            by_step=dict(sorted(by_step.items())),
        )
    )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _read_zeroshot_run(data: ReportData, store: ResultStore, run: RunRecord) -> None:
    """Zero-shot rows are their own section's, never clean or transfer cells."""
    spec = run.spec
    attacks = list(spec.get("attacks", []))
    names = attacks + (["+".join(attacks)] if len(attacks) > 1 else [])
    labels = tuple(f"{name}@eps={eps}" for eps in spec.get("eps", []) for name in names)
    steps = spec.get("steps")
    data.zeroshot_runs.append(
        ZeroShotRun(run.key, str(spec.get("dataset", "?")), labels, steps and int(steps))
    )
    for key, metrics in _group_rows(store.metrics(run.run_id)).items():
        victim, _, _, attack, _, _, _, _, scoring = key
        if scoring.startswith(ZEROSHOT_SCORING) and "acc" in metrics:
            task = scoring[len(ZEROSHOT_SCORING) :]
            images = metrics.get("images", math.nan)
            data.zeroshot.append(
                ZeroShotScore(victim, task, attack, metrics["acc"], images, run.key)
            )


def _read_bias_run(data: ReportData, store: ResultStore, run: RunRecord) -> None:
    spec = run.spec
    kind = "caption" if run.kind == BIAS_CAPTION else "relevance"
    sources = spec.get("sources", {"a": "clean", "b": "adversarial"})
    for key, metrics in _group_rows(store.metrics(run.run_id)).items():
        victim, dataset, split, attack, _, source, _, _, _ = key
        data.bias.append(
            BiasScore(
                kind=kind,
                victim=victim,
                attack=attack,
                source=source,
                dataset=dataset,
                split=split,
                sources={"a": str(sources.get("a", "A")), "b": str(sources.get("b", "B"))},
                target_concept=spec.get("target_concept"),
                metrics=metrics,
                run=run.key,
            )
        )


def _read_defense_summary(
    data: ReportData, store: ResultStore, run: RunRecord, grouped: dict[_RowKey, dict]
) -> None:
    """The defense table of a matrix run with a defenses axis, as `robust defenses show`
    computes it; a spec record this version cannot read leaves only the raw defended rows."""
    raw = run.spec.get("spec")
    if run.kind != "matrix" or not isinstance(raw, dict) or not raw.get("defenses"):
        return
    keys = [key for key in grouped if key[7] is not None]
    if not keys:
        return
    try:
        layout = MatrixLayout.from_spec(raw)
    except RobustError:
        return
    if not layout.defenses:
        return
    dataset, split = keys[0][1], keys[0][2]
    rows = defense_table(store, run.run_id, layout, dataset, split)
    data.defense_summaries.append(DefenseSummary(run.key, dataset, split, layout.adaptive, rows))


def _run_record(info: dict[str, Any], store: str) -> RunRecord:
    spec = info["spec"]
    return RunRecord(
        store=store,
        run_id=info["run_id"],
        created_at=info["created_at"],
        kind=str(spec.get("command", "run")),
        name=str(spec.get("name") or spec.get("command") or "run"),
        spec=spec,
        seeds=info["seeds"],
        versions=info["versions"],
        git_commit=info["git_commit"],
        git_dirty=info["git_dirty"],
        hardware=info["hardware"],
    )


def _register_attacks(data: ReportData, run: RunRecord) -> dict[str, str]:
    """Add this run's attacks; a label another run already uses gets the run name appended."""
    renamed: dict[str, str] = {}
    for attack in run.spec.get("spec", {}).get("attacks", []):
        label = str(attack.get("label") or attack["name"])
        shown = label if label not in data.attacks else f"{label} ({run.name}, {run.key})"
        renamed[label] = shown
        data.attacks[shown] = AttackInfo(
            label=shown,
            name=str(attack["name"]),
            params=dict(attack.get("params", {})),
            mlm=attack.get("mlm"),
            run=run.key,
        )
    return renamed


def _white_box_pairs(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) names of the white-box cells of a matrix run's recorded spec (none
    for a record this version cannot read)."""
    try:
        layout = MatrixLayout.from_spec(spec)
    except RobustError:
        return set()
    white_box = layout.white_box()
    return {
        (source, target)
        for s, source in enumerate(layout.source_names)
        for t, target in enumerate(layout.target_names)
        if white_box[s, t]
    }


_RowKey = tuple[str, str, str, str | None, int | None, str | None, str | None, str | None, str]
_ROW_KEY: Final[tuple[str, ...]] = (
    "victim", "dataset", "split", "attack", "seed", "source", "target", "defense", "scoring",
)  # fmt: skip


def _group_rows(rows: Iterable[MetricRow]) -> dict[_RowKey, dict[str, float]]:
    """Each cell's metrics by name, the cell keyed by `_ROW_KEY` in that order."""
    grouped: dict[_RowKey, dict[str, float]] = {}
    for row in rows:
        key = tuple(getattr(row, name) for name in _ROW_KEY)
        grouped.setdefault(key, {})[row.metric] = row.value
    return grouped


def _read_cache(root: Path, run_dir: Path) -> list[CachedAttack]:
    cached = []
    try:
        entries = AdversarialCache(root).complete_entries()
    except (CacheError, OSError, json.JSONDecodeError, KeyError) as exc:
        raise ReportDataError(
            f"{root}: adversarial cache is unreadable ({exc}); rerun the matrix to rewrite it"
        ) from exc
    for entry in entries:
        manifest = entry.manifest()
        cached.append(
            CachedAttack(
                attack=entry.attack_label,
                source=entry.source,
                seed=entry.seed,
                num_images=int(manifest.get("num_images", 0)),
                image_size=int(manifest.get("image_size", 0)),
                config=manifest.get("plan", {}).get("config", {}),
                path=entry.path.relative_to(run_dir).as_posix(),
            )
        )
    return cached


def victim_headline_scoring(scores: Iterable[TransferScore | CleanScore], victim: str) -> str:
    """The scoring a victim's headline numbers use among `scores` (`results.headline_scoring`)."""
    cells = (
        (score.target if isinstance(score, TransferScore) else score.victim, score.scoring)
        for score in scores
    )
    return headline_scoring(cells, victim)


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values, NaN when there are none: the report's summaries across
    cells (seeds are averaged by `robust.harness.results.seed_mean`)."""
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else math.nan
