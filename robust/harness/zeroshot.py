"""`robust zeroshot`: clean and APGD-robust zero-shot accuracy of victims x tasks x eps.

Rows go into the run directory's store as their own kind (the run spec's `command` is
`zeroshot`): `scoring` is `zero-shot:TASK`, `metric` is `acc` (and `images`, the task's
image count, on clean rows); clean rows have no attack, attacked rows have
`attack="ATTACK@eps=EPS"` (e.g. `apgd-ce@eps=2/255`) and the attack seed, with the victim as
source (and, like every row, as target),
and with several attacks `"apgd-ce+apgd-t@eps=EPS"` is the worst case over them (an image
counts as robust only if every applicable attack failed on it, AutoAttack's robust
accuracy). Per-image true-class ranks are stored as `tr` query ranks of the same cell.
The run spec records every task file's classes and templates and every attack's full
config (per task: APGD-T's class and target counts depend on it).

Each cell is written as soon as it is computed, and a re-run of the same request into the
same directory continues the same run, skipping finished cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robust.attacks.anyattack import parse_eps
from robust.attacks.interop import torchattacks_class
from robust.data import load_image_dataset
from robust.data.dataset import CaptionDataset
from robust.data.image_folder import ImageFolder
from robust.errors import RobustError
from robust.eval import zeroshot
from robust.eval.prompts import PromptTask, load_prompt_task
from robust.harness.evaluate import dataset_key
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress
from robust.victims.base import Victim
from robust.victims.registry import check_victim, load_victim

COMMAND = "zeroshot"
SCORING_PREFIX = "zero-shot:"
WORLD_TASKS = ("world-shape", "world-color", "world-background")


@dataclass(frozen=True)
class ZeroShotRequest:
    """What to evaluate; `eps` as written (`2/255`), so labels read as papers state them."""

    victims: tuple[str, ...]
    dataset: str
    tasks: tuple[str, ...] = ()
    eps: tuple[str, ...] = ("2/255", "4/255")
    attacks: tuple[str, ...] = ("apgd-ce", "apgd-t")
    steps: int = zeroshot.DEFAULT_STEPS
    seed: int = 0
    limit: int | None = None
    batch_size: int = 64


@dataclass
class ZeroShotEvaluation:
    """Accuracy per (victim, task): clean, and per eps label the accuracy under each attack
    label (None where an attack does not apply to the task)."""

    run_dir: Path
    run_id: int
    attack_labels: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def attack_label(attack: str, eps: str) -> str:
    """How a store row names an attack at a budget: `apgd-ce@eps=2/255`."""
    return f"{attack}@eps={eps}"


def worst_case_name(attacks: Sequence[str]) -> str | None:
    """The name of the worst case over several attacks (`apgd-ce+apgd-t`), None for one."""
    return "+".join(attacks) if len(attacks) > 1 else None


def run_zeroshot(
    request: ZeroShotRequest,
    run_dir: Path,
    *,
    device: str = "cpu",
    progress: Progress | None = None,
) -> ZeroShotEvaluation:
    """Evaluate every victim on every task, clean and under every attack at every eps.

    All input is checked before any work: victims, prompt files, eps, attacks, the dataset
    and whether each task fits it, and the first victim is loaded before the store is
    opened; a bad one is one error line and writes nothing.
    """
    inputs = _checked_inputs(request)
    dataset_name, split = dataset_key(inputs.dataset)
    labels = [
        attack_label(attack, eps)
        for eps in request.eps
        for attack in (*request.attacks, worst_case_name(request.attacks))
        if attack is not None
    ]
    victim = _embedding_victim(request.victims[0], device)
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = _resume_or_start(store, _run_spec(request, inputs), request.seed)
        evaluation = ZeroShotEvaluation(Path(run_dir), run_id, labels)
        for index, name in enumerate(request.victims):
            if index > 0:
                victim = _embedding_victim(name, device)
            for task in inputs.tasks:
                data = inputs.images[task.name]
                cell = _Cell(store, run_id, victim, task, dataset_name, split, data, request.seed)
                evaluation.rows.append(cell.evaluate(request, inputs.configs, progress))
            del victim
    return evaluation


@dataclass(frozen=True)
class _Inputs:
    """A request's validated pieces: the dataset, its tasks with their images, and every
    applicable attack's config keyed `TASK/ATTACK@eps=EPS`."""

    dataset: CaptionDataset | ImageFolder
    tasks: list[PromptTask]
    images: dict[str, zeroshot.TaskImages]
    configs: dict[str, dict[str, Any]]


def _checked_inputs(request: ZeroShotRequest) -> _Inputs:
    """Everything a run needs, each problem one error line before any model runs."""
    budgets = {text: parse_eps(text) for text in request.eps}
    if not budgets:
        raise RobustError("give at least one eps, e.g. --eps 2/255,4/255")
    zeroshot.check_attacks(request.attacks)
    torchattacks_class(zeroshot.ATTACK_CLASSES[request.attacks[0]])  # installed?
    if request.steps < 1 or request.batch_size < 1:
        raise RobustError("--steps and --batch-size must be positive")
    if not request.victims:
        raise RobustError("give at least one --victim")
    for name in request.victims:
        check_victim(name)
    dataset = load_image_dataset(request.dataset, limit=request.limit)
    names = request.tasks or (() if isinstance(dataset, ImageFolder) else WORLD_TASKS)
    if not names:
        raise RobustError(
            f"{request.dataset} needs a prompt file: pass --task FILE (classes and templates)"
        )
    tasks = [load_prompt_task(name) for name in names]
    images = {task.name: zeroshot.task_images(dataset, task) for task in tasks}
    configs = {
        f"{task.name}/{attack_label(attack, eps)}": zeroshot.apgd_config(
            attack, value, len(task.classes), steps=request.steps, seed=request.seed
        )
        for task in tasks
        for eps, value in budgets.items()
        for attack in request.attacks
        if zeroshot.not_applicable(attack, len(task.classes)) is None
    }
    return _Inputs(dataset, tasks, images, configs)


def _run_spec(request: ZeroShotRequest, inputs: _Inputs) -> dict[str, Any]:
    """What the run record keeps: the request, every task's file content, every config."""
    return {
        "command": COMMAND,
        "victims": list(request.victims),
        "dataset": inputs.dataset.name,
        "tasks": {
            task.name: {**task.describe(), "images": len(inputs.images[task.name])}
            for task in inputs.tasks
        },
        "eps": list(request.eps),
        "attacks": list(request.attacks),
        "attack_configs": inputs.configs,
        "classifier": "logit_scale * image_emb @ class_emb.T; class_emb: the class name in "
        "every template, encoded and averaged; logit_scale: the victim's own, else 100",
        "steps": request.steps,
        "seed": request.seed,
        "batch_size": request.batch_size,
    }


def _embedding_victim(name: str, device: str) -> Victim:
    """A loaded victim that has image and text embeddings (zero-shot needs both)."""
    victim = load_victim(name, device=device)
    if "itc" not in victim.capabilities:
        raise RobustError(
            f"{name} has no image-text embeddings ({', '.join(victim.capabilities)}); "
            "zero-shot classification needs a CLIP-style (itc) victim"
        )
    return victim


def _resume_or_start(store: ResultStore, spec: dict[str, Any], seed: int) -> int:
    """The latest run of exactly this request (to finish it), else a new run."""
    for run_id in reversed(store.run_ids()):
        if store.run_info(run_id)["spec"] == spec:
            return run_id
    return store.start_run(spec, seeds={"attack": seed, "world": 0})


@dataclass
class _Cell:
    """One (victim, task): its classifier, and the store rows it writes."""

    store: ResultStore
    run_id: int
    victim: Victim
    task: PromptTask
    dataset: str
    split: str
    data: zeroshot.TaskImages
    seed: int  # the attacks' seed, the `seed` of attacked rows

    def evaluate(
        self,
        request: ZeroShotRequest,
        configs: dict[str, dict[str, Any]],
        progress: Progress | None,
    ) -> dict[str, Any]:
        """Clean and attacked accuracy, each cell read from the store when already there."""
        classifier = zeroshot.zero_shot_classifier(self.victim, self.task)
        describe = f"{self.victim.name} {self.task.name}"
        clean = self._ranks(
            None,
            lambda: zeroshot.classify_ranks(
                self.victim,
                classifier,
                self.data,
                batch_size=request.batch_size,
                progress=progress,
                description=f"{describe} clean",
            ),
        )
        row: dict[str, Any] = {
            "victim": self.victim.name,
            "task": self.task.name,
            "images": len(self.data),
            "clean": _accuracy(clean),
        }
        for eps in request.eps:
            applicable: list[np.ndarray] = []
            for attack in request.attacks:
                label = attack_label(attack, eps)
                config = configs.get(f"{self.task.name}/{label}")
                if config is None:  # not applicable to this task's class count
                    row[label] = None
                    continue
                ranks = self._ranks(
                    label,
                    lambda c=config, lb=label: zeroshot.classify_ranks(
                        self.victim,
                        classifier,
                        self.data,
                        attack=zeroshot.build_apgd(c, classifier),
                        seed=request.seed,
                        batch_size=request.batch_size,
                        progress=progress,
                        description=f"{describe} {lb}",
                    ),
                )
                row[label] = _accuracy(ranks)
                applicable.append(ranks)
            worst = worst_case_name(request.attacks)
            if worst is not None:
                label = attack_label(worst, eps)
                row[label] = None
                if applicable:
                    ranks = np.maximum.reduce(applicable)
                    self._write(label, ranks)
                    row[label] = _accuracy(ranks)
        return row

    def _ranks(self, attack: str | None, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Stored ranks of a finished cell, else computed and written at once."""
        keys = self._keys(attack)
        if self.store.has_metrics(self.run_id, **keys, metric_names=["acc"]):
            return self.store.query_ranks(self.run_id, direction="tr", **keys)
        ranks = compute()
        self._write(attack, ranks)
        return ranks

    def _keys(self, attack: str | None) -> dict[str, Any]:
        attacked = attack is not None
        return {
            "victim": self.victim.name,
            "dataset": self.dataset,
            "split": self.split,
            "attack": attack,
            "seed": self.seed if attacked else None,
            "source": self.victim.name if attacked else None,
            "target": self.victim.name,
            "scoring": SCORING_PREFIX + self.task.name,
        }

    def _write(self, attack: str | None, ranks: np.ndarray) -> None:
        keys = self._keys(attack)
        self.store.write_query_ranks(self.run_id, direction="tr", ranks=ranks, **keys)
        rows = [MetricRow(metric="acc", value=_accuracy(ranks), **keys)]
        if attack is None:
            rows.append(MetricRow(metric="images", value=float(len(ranks)), **keys))
        self.store.write_metrics(self.run_id, rows)


def _accuracy(ranks: np.ndarray) -> float:
    return float(np.mean(ranks == 0)) if len(ranks) else float("nan")
