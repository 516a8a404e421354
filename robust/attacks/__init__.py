"""Attacks by name: the registry the harness and CLI build attacks from."""

from __future__ import annotations

import importlib
from typing import Any

from robust.attacks.base import (
    AdvBatch,
    Attack,
    AttackBatch,
    AttackConfigError,
    ImageAttack,
    MultimodalAttack,
    TextAttack,
)
from robust.victims.base import Victim

# name -> "module:Class"; imported lazily so a missing optional dependency only matters
# when that attack is used.
ATTACKS: dict[str, str] = {
    "pgd": "robust.attacks.pgd:PGD",
    "bert_attack": "robust.attacks.bert_attack:BertAttack",
    "sep_attack": "robust.attacks.sep:SepAttack",
    "co_attack": "robust.attacks.co_attack:CoAttack",
    "sga": "robust.attacks.sga:SGA",
    "torchattacks": "robust.attacks.interop:TorchattacksAttack",
    "advclip": "robust.attacks.advclip:AdvCLIP",
    "anyattack": "robust.attacks.anyattack_targeted:AnyAttackTargeted",
}


def attack_class(name: str) -> type[Attack]:
    """The class registered under `name`, or one clear error listing the known names."""
    if name not in ATTACKS:
        raise AttackConfigError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    module_name, _, class_name = ATTACKS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_attack(name: str, victim: Victim, params: dict[str, Any] | None = None, **extra: Any):
    """Build attack `name` bound to `victim` with hyper-parameters `params`."""
    try:
        return attack_class(name)(victim, **(params or {}), **extra)
    except TypeError as error:
        raise AttackConfigError(f"attack {name!r}: {error}") from None


__all__ = [
    "ATTACKS",
    "AdvBatch",
    "Attack",
    "AttackBatch",
    "AttackConfigError",
    "ImageAttack",
    "MultimodalAttack",
    "TextAttack",
    "attack_class",
    "build_attack",
]
