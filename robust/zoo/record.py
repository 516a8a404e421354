"""What a zoo training run reports and the `training.json` it leaves beside each checkpoint.

Every trainer (CLIP, ALBEF/TCL, BLIP, the masked LM, the ITM refinement) writes the same
record, so it lives apart from the trainers and the dispatcher that imports them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from robust.data.dataset import CaptionDataset
from robust.provenance import collect_provenance


@dataclass(frozen=True)
class TrainReport:
    """What a training run did: where it saved, how long it took, its final loss."""

    name: str
    output_dir: Path
    seconds: float
    steps: int
    final_loss: float
    recipe: dict
    # what a trainer measured beyond its final loss (a supervised start's scores), kept in
    # training.json under the same keys
    details: dict = field(default_factory=dict)


def write_training_record(report: TrainReport, dataset: CaptionDataset) -> Path:
    """Record how a checkpoint was made (recipe, seed, time, loss, versions) beside it."""
    provenance = collect_provenance()
    record = {
        "name": report.name,
        "command": f"robust zoo train {report.name}",
        "recipe": report.recipe,
        "train_dataset": dataset.name,
        "train_images": dataset.num_images,
        "steps": report.steps,
        "seconds": round(report.seconds, 1),
        "final_loss": report.final_loss,
        "versions": provenance["versions"],
        "hardware": provenance["hardware"],
        **report.details,
    }
    path = report.output_dir / "training.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
