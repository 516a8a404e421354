"""Attacks: the one attack contract and the registry the harness and CLI build attacks from."""

from __future__ import annotations

from robust.attacks.base import (
    AdvBatch,
    Attack,
    AttackBatch,
    AttackConfigError,
    AttackKind,
    ImageAttack,
    MultimodalAttack,
    TextAttack,
    UniversalAttack,
)
from robust.attacks.registry import attack_class, attack_names, build_attack, register_attack

__all__ = [
    "AdvBatch",
    "Attack",
    "AttackBatch",
    "AttackConfigError",
    "AttackKind",
    "ImageAttack",
    "MultimodalAttack",
    "TextAttack",
    "UniversalAttack",
    "attack_class",
    "attack_names",
    "build_attack",
    "register_attack",
]
