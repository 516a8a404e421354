"""Zero-shot classification and its robustness under APGD, as RobustVLM measures it.

A victim becomes a classifier over a task's classes: each class is its name written into
the task's templates, encoded and averaged (CLIP's prompt ensemble), and an image's logits
are `logit_scale * image_emb @ class_emb.T` (`robust.attacks.interop`). Robust accuracy is
accuracy on images attacked by torchattacks' APGD, the attacks of AutoAttack's standard
set that RobustVLM (TeCoA, FARE) reports at eps 2/255 and 4/255 with 100 iterations:

- `apgd-ce`: `torchattacks.APGD(loss="ce")`, untargeted cross-entropy;
- `apgd-t`: `torchattacks.APGDT`, the targeted DLR loss against the top
  `min(9, classes - 1)` other classes (AutoAttack's 9 targets, fewer for small tasks). Its
  loss reads the 3rd and 4th largest logits, so it needs at least 4 classes; on smaller
  tasks it is not applicable and is skipped (`not_applicable` says why).

A world image may hold several of a task's classes (a scene of three objects has up to three
shapes); calling it any of them is correct, and its true class is the one of them its clean
logits rank highest, which the attacks then attack. Per image the evaluation keeps the rank
of its best true class (how many false classes score at least as high: 0 is correct; ties
count against the image), so any accuracy can be recomputed. APGD only perturbs images it
sees classified correctly, so robust accuracy never exceeds clean accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robust.attacks.interop import EmbeddingClassifier, run_torchattacks, torchattacks_class
from robust.data.dataset import CaptionDataset, ImageSource
from robust.data.image_folder import ImageFolder, folder_labels
from robust.data.images import load_images
from robust.errors import RobustError
from robust.eval.downstream import class_embeddings
from robust.eval.prompts import PromptTask
from robust.progress import Progress, ensure_progress
from robust.victims.base import Victim

ATTACK_CLASSES = {"apgd-ce": "APGD", "apgd-t": "APGDT"}
APGDT_MIN_CLASSES = 4
MAX_TARGET_CLASSES = 9
DEFAULT_STEPS = 100
# the keyword arguments APGD and APGDT share
_ARGUMENTS = ("norm", "eps", "steps", "n_restarts", "seed", "eot_iter", "rho")


@dataclass(frozen=True)
class TaskImages:
    """The images of a dataset that take part in a task and, per image, which of the task's
    classes are true of it (`[images, classes]` booleans)."""

    dataset: str
    images: ImageSource
    indices: np.ndarray
    true_classes: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def task_images(dataset: CaptionDataset | ImageFolder, task: PromptTask) -> TaskImages:
    """A world dataset's images holding at least one of a world task's classes (see
    `PromptTask.class_sets`), or every image of a folder dataset for a folder task."""
    if isinstance(dataset, ImageFolder):
        if task.label is not None:
            raise RobustError(
                f"{task.source} is a world task (label: {task.label}); an image-folder dataset "
                "needs a prompt file whose classes are its folder names, without `label`"
            )
        labels = folder_labels(dataset, task.classes, task.source)
        true_classes = np.eye(len(task.classes), dtype=bool)[labels]
        return TaskImages(dataset.name, dataset.images, np.arange(len(labels)), true_classes)
    if task.label is None or not dataset.labels:
        raise RobustError(
            f"{task.source} needs {'world labels' if task.label else 'an image-folder dataset'}"
            f" but {dataset.name} has {'none' if not dataset.labels else 'world labels'}; use "
            "a world task on world:SPLIT or a folder prompt file on folder:ROOT"
        )
    true_classes = np.zeros((dataset.num_images, len(task.classes)), dtype=bool)
    for image, classes in enumerate(task.class_sets(dataset.labels)):
        true_classes[image, list(classes)] = True
    keep = np.flatnonzero(true_classes.any(axis=1))
    return TaskImages(dataset.name, dataset.images, keep, true_classes[keep])


def zero_shot_classifier(victim: Victim, task: PromptTask) -> EmbeddingClassifier:
    """Logits over the task's classes from prompt-ensembled class embeddings."""
    return EmbeddingClassifier(victim, class_embeddings(victim.encode_text, task))


def not_applicable(attack: str, num_classes: int) -> str | None:
    """Why `attack` cannot run on a task of `num_classes` classes, or None when it can."""
    if attack == "apgd-t" and num_classes < APGDT_MIN_CLASSES:
        return (
            f"apgd-t's targeted DLR loss needs at least {APGDT_MIN_CLASSES} classes, "
            f"the task has {num_classes}"
        )
    return None


def check_attacks(attacks: Sequence[str]) -> None:
    """Unknown attack names are one error line."""
    unknown = [name for name in attacks if name not in ATTACK_CLASSES]
    if unknown or not attacks:
        raise RobustError(
            f"unknown zero-shot attack {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(ATTACK_CLASSES)}"
        )


def apgd_config(
    attack: str, eps: float, num_classes: int, *, steps: int, seed: int
) -> dict[str, Any]:
    """Every argument the torchattacks attack is built with (L-inf, one restart, AutoAttack's
    defaults), plus the class counts; what the store records and `build_apgd` reads."""
    check_attacks([attack])
    if steps < 1:
        raise RobustError(f"APGD needs at least one step, got {steps}")
    config: dict[str, Any] = {
        "attack": attack,
        "torchattacks_class": ATTACK_CLASSES[attack],
        "norm": "Linf",
        "eps": eps,
        "steps": steps,
        "n_restarts": 1,
        "seed": seed,
        "eot_iter": 1,
        "rho": 0.75,
        "n_classes": num_classes,
    }
    if attack == "apgd-ce":
        return config | {"loss": "ce"}
    return config | {
        "loss": "dlr-targeted",
        "n_target_classes": min(MAX_TARGET_CLASSES, num_classes - 1),
    }


def build_apgd(config: dict[str, Any], classifier: EmbeddingClassifier) -> Any:
    """The torchattacks attack `config` describes, bound to `classifier`."""
    if config["n_classes"] != classifier.num_classes:
        raise ValueError("the config was made for another number of classes")
    arguments = {key: config[key] for key in _ARGUMENTS}
    attack_class = torchattacks_class(config["torchattacks_class"])
    if config["attack"] == "apgd-ce":
        return attack_class(classifier, loss="ce", **arguments)
    built = attack_class(classifier, n_classes=config["n_classes"], **arguments)
    built.n_target_classes = config["n_target_classes"]  # APGDT's own default: classes - 1
    return built


def best_true_class(logits: torch.Tensor, true_classes: torch.Tensor) -> torch.Tensor:
    """Per image, the index of its true class that `logits` rank highest."""
    return logits.masked_fill(~true_classes, float("-inf")).argmax(dim=1)


def true_class_ranks(logits: torch.Tensor, true_classes: torch.Tensor) -> np.ndarray:
    """Per image, how many of the classes not true of it score at least its best true class
    (0: correct; a tie with a false class counts against the image)."""
    own = logits.gather(1, best_true_class(logits, true_classes)[:, None])
    return ((logits >= own) & ~true_classes).sum(dim=1).cpu().numpy().astype(np.int64)


def classify_ranks(
    victim: Victim,
    classifier: EmbeddingClassifier,
    data: TaskImages,
    *,
    attack: Any | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: Progress | None = None,
    description: str = "zero-shot",
) -> np.ndarray:
    """True-class ranks of every task image, clean or (with `attack`) attacked batch by
    batch; torch's global generator is seeded from `seed` around each attack call."""
    device = victim.device
    ranks = []
    with ensure_progress(progress).task(description, len(data)) as task:
        for start in range(0, len(data), batch_size):
            indices = data.indices[start : start + batch_size]
            images = load_images(
                data.images, indices, size=victim.image_size, mode=victim.resize_mode
            ).to(device)
            true_classes = torch.as_tensor(
                data.true_classes[start : start + batch_size], device=device
            )
            if attack is not None:
                with torch.no_grad():
                    labels = best_true_class(classifier(images), true_classes)
                images = run_torchattacks(attack, images, labels, seed)
            with torch.no_grad():
                ranks.append(true_class_ranks(classifier(images), true_classes))
            task.advance(len(indices))
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
