"""What Sep-Attack, Co-Attack and SGA share: splitting hyper-parameters between their image
(PGD) and text (BERT-Attack) halves, and moving between per-image caption groups and the
flat caption list that text attacks work on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from robust.attacks.base import AttackConfigError, MultimodalAttack
from robust.attacks.bert_attack import DEFAULT_MLM, BertAttack, BertAttackParams, MaskedLM
from robust.attacks.pgd import PGD, PGDParams
from robust.victims.base import Victim

IMAGE_FIELDS = frozenset(f.name for f in fields(PGDParams)) - {"objective"}
TEXT_FIELDS = frozenset(f.name for f in fields(BertAttackParams)) - {"objective"}


@dataclass(frozen=True)
class MultimodalParams:
    """The image half's and the text half's hyper-parameters, plus attack-specific extras."""

    image: PGDParams
    text: BertAttackParams
    extra: dict[str, Any]


def build_halves(
    attack_name: str,
    victim: Victim,
    params: dict[str, Any],
    *,
    image_objective: str,
    text_objective: str,
    mlm: MaskedLM,
    seed: int,
    extra_names: frozenset[str] = frozenset(),
) -> tuple[PGD, BertAttack, dict[str, Any]]:
    """Split flat keyword parameters into a PGD and a BertAttack bound to `victim`.

    `objective` is fixed by each multimodal attack; anything not a PGD, BERT-Attack or
    declared extra parameter is one clear error.
    """
    if "objective" in params:
        raise AttackConfigError(
            f"{attack_name} fixes its own objectives; remove 'objective' from its parameters"
        )
    shared = IMAGE_FIELDS & TEXT_FIELDS
    if shared:  # both halves would claim the same name: never silently route it to one
        raise AttackConfigError(f"ambiguous parameter names {sorted(shared)}")
    unknown = sorted(set(params) - IMAGE_FIELDS - TEXT_FIELDS - extra_names)
    if unknown:
        valid = sorted(IMAGE_FIELDS | TEXT_FIELDS | extra_names)
        raise AttackConfigError(
            f"{attack_name} has no parameter {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    image = {k: v for k, v in params.items() if k in IMAGE_FIELDS}
    text = {k: v for k, v in params.items() if k in TEXT_FIELDS}
    extra = {k: v for k, v in params.items() if k in extra_names}
    image_attack = PGD(victim, seed=seed, objective=image_objective, **image)
    text_attack = BertAttack(victim, mlm=mlm, seed=seed, objective=text_objective, **text)
    return image_attack, text_attack, extra


class TwoHalfAttack(MultimodalAttack):
    """A multimodal attack built from a PGD image half and a BERT-Attack text half.

    Subclasses fix both halves' objectives and may declare `extra_params` and `defaults`.
    """

    image_objective: ClassVar[str] = "kl"
    text_objective: ClassVar[str] = "kl"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, victim: Victim, *, mlm: MaskedLM = DEFAULT_MLM, seed: int = 0, **params: Any
    ) -> None:
        super().__init__(victim, seed=seed)
        self.image_attack, self.text_attack, self.extra = build_halves(
            self.name,
            victim,
            {**self.defaults, **params},
            image_objective=self.image_objective,
            text_objective=self.text_objective,
            mlm=mlm,
            seed=seed,
            extra_names=self.extra_params,
        )

    def params(self) -> MultimodalParams:
        return MultimodalParams(self.image_attack.params(), self.text_attack.params(), self.extra)

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter of both halves plus which masked LM proposed substitutes."""
        return {**super().config(), "mlm": self.text_attack.mlm_name}


def flatten(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """All captions in one list, plus the image index each came from."""
    texts = [text for group in groups for text in group]
    owners = [index for index, group in enumerate(groups) for _ in group]
    return texts, owners


def regroup(texts: Sequence[str], groups: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """Put a flat caption list back into the shape of `groups`."""
    result, start = [], 0
    for group in groups:
        result.append(tuple(texts[start : start + len(group)]))
        start += len(group)
    return tuple(result)


def per_image(embeddings: torch.Tensor, owners: Sequence[int], count: int) -> list[torch.Tensor]:
    """Split caption embeddings `[T, D]` into one `[n_i, D]` tensor per image."""
    index = torch.as_tensor(owners, device=embeddings.device)
    return [embeddings[index == i] for i in range(count)]
