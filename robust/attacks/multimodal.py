"""What Sep-Attack, Co-Attack and SGA share: splitting hyper-parameters between their image
(PGD) and text (BERT-Attack) halves, and splitting caption embeddings back per image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from robust.attacks.base import AttackConfigError, MultimodalAttack, make_params
from robust.attacks.bert_attack import (
    DEFAULT_MLM,
    BertAttack,
    BertAttackParams,
    MaskedLM,
    resolve_mlm_folder,
)
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


class TwoHalfAttack(MultimodalAttack):
    """A multimodal attack built from a PGD image half and a BERT-Attack text half.

    Its parameters are flat PGD and BERT-Attack keywords; subclasses fix both halves'
    objectives and may declare `extra_params` (checked by `check_extra`) and `defaults`.
    """

    Params: ClassVar[type] = MultimodalParams
    needs_mlm: ClassVar[bool] = True
    image_objective: ClassVar[str] = "kl"
    text_objective: ClassVar[str] = "kl"
    # keywords of its own beside the PGD and BERT-Attack ones (e.g. Co-Attack's alpha)
    extra_params: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, victim: Victim, *, mlm: MaskedLM = DEFAULT_MLM, seed: int = 0, **params: Any
    ) -> None:
        super().__init__(victim, seed=seed, **params)
        image, text, extra = self.split_params(params)
        self.image_attack = PGD(victim, seed=seed, objective=self.image_objective, **image)
        self.text_attack = BertAttack(
            victim, mlm=mlm, seed=seed, objective=self.text_objective, **text
        )
        self.extra = extra

    @classmethod
    def split_params(
        cls, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Flat keyword parameters (after `defaults`) as (image, text, extra) keywords.

        `objective` is fixed by each multimodal attack; anything not a PGD, BERT-Attack or
        declared extra parameter is one clear error.
        """
        params = {**cls.defaults, **params}
        if "objective" in params:
            raise AttackConfigError(
                f"{cls.name} fixes its own objectives; remove 'objective' from its parameters"
            )
        shared = IMAGE_FIELDS & TEXT_FIELDS
        if shared:  # both halves would claim the same name: never silently route it to one
            raise AttackConfigError(f"ambiguous parameter names {sorted(shared)}")
        unknown = sorted(set(params) - IMAGE_FIELDS - TEXT_FIELDS - cls.extra_params)
        if unknown:
            valid = sorted(IMAGE_FIELDS | TEXT_FIELDS | cls.extra_params)
            raise AttackConfigError(
                f"{cls.name} has no parameter {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(valid)}"
            )
        image = {k: v for k, v in params.items() if k in IMAGE_FIELDS}
        text = {k: v for k, v in params.items() if k in TEXT_FIELDS}
        extra = {k: v for k, v in params.items() if k in cls.extra_params}
        return image, text, extra

    @classmethod
    def check_extra(cls, extra: dict[str, Any]) -> None:
        """Range checks of the attack's own extra parameters (none by default)."""

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> MultimodalParams:
        image, text, extra = cls.split_params(params)
        cls.check_extra(extra)
        return MultimodalParams(
            make_params(cls.name, PGDParams, {**image, "objective": cls.image_objective}),
            make_params(cls.name, BertAttackParams, {**text, "objective": cls.text_objective}),
            extra,
        )

    @classmethod
    def check_files(cls, params: Mapping[str, Any], mlm: str | None) -> None:
        """The masked LM the text half loads (the default one unless `mlm` is given)."""
        resolve_mlm_folder(mlm or DEFAULT_MLM)

    def params(self) -> MultimodalParams:
        return MultimodalParams(self.image_attack.params(), self.text_attack.params(), self.extra)

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter of both halves plus which masked LM proposed substitutes."""
        return {**super().config(), "mlm": self.text_attack.mlm_name}


def per_image(embeddings: torch.Tensor, owners: Sequence[int], count: int) -> list[torch.Tensor]:
    """Split caption embeddings `[T, D]` into one `[n_i, D]` tensor per image."""
    index = torch.as_tensor(owners, device=embeddings.device)
    return [embeddings[index == i] for i in range(count)]
