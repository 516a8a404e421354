"""Attacks by name, registered where they are defined (timm's `register_model` habit).

A class registers under its own `name`; a user's attack registers the same way from their
own code and is then named in a matrix spec. The built-in attack modules are imported only
when a name is not yet known, so an optional dependency matters only to the attack using it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import is_dataclass
from typing import Any, TypeVar, get_args

from robust.attacks.base import Attack, AttackConfigError, AttackKind
from robust.victims.base import Victim

# modules whose import registers the built-in attacks
BUILTIN_ATTACK_MODULES: tuple[str, ...] = (
    "robust.attacks.pgd",
    "robust.attacks.bert_attack",
    "robust.attacks.sep",
    "robust.attacks.co_attack",
    "robust.attacks.sga",
    "robust.attacks.dra",
    "robust.attacks.sa_aet",
    "robust.attacks.interop",
    "robust.attacks.advclip",
    "robust.attacks.anyattack_targeted",
)

_REGISTERED: dict[str, type[Attack]] = {}

AttackClass = TypeVar("AttackClass", bound=type[Attack])


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_attack(cls: AttackClass) -> AttackClass:
    """Class decorator: make `cls` buildable by its `name` (in specs, `build_attack`, CLI)."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)) or inspect.isabstract(cls):
        raise AttackConfigError(
            f"{cls!r} is not a concrete Attack subclass; derive it from ImageAttack, "
            "TextAttack, MultimodalAttack or UniversalAttack and implement its method"
        )
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise AttackConfigError(
            f"{_qualified(cls)} has no name of its own; set `name: ClassVar[str] = ...` on it"
        )
    params_class = getattr(cls, "Params", None)
    if not (isinstance(params_class, type) and is_dataclass(params_class)):
        raise AttackConfigError(
            f"{_qualified(cls)} has no Params dataclass; set `Params: ClassVar[type] = ...` "
            "to the dataclass of its hyper-parameters"
        )
    if getattr(cls, "kind", None) not in get_args(AttackKind):
        raise AttackConfigError(
            f"{_qualified(cls)} has no kind; derive it from ImageAttack, TextAttack, "
            "MultimodalAttack or UniversalAttack"
        )
    if cls.__module__ not in BUILTIN_ATTACK_MODULES:  # a user's: see every built-in name first
        _import_builtins()
    taken = _REGISTERED.get(name)
    # the same definition run again (a reloaded module, a re-run notebook cell) replaces its
    # earlier self; another class under a taken name is refused
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise AttackConfigError(
            f"attack name {name!r} is already registered by {_qualified(taken)}; give "
            f"{_qualified(cls)} another name"
        )
    _REGISTERED[name] = cls
    return cls


def _import_builtins() -> None:
    for module in BUILTIN_ATTACK_MODULES:
        importlib.import_module(module)


def attack_names() -> tuple[str, ...]:
    """Every registered attack name: the built-in ones, then any registered by users."""
    _import_builtins()
    return tuple(_REGISTERED)


def attack_class(name: str) -> type[Attack]:
    """The class registered under `name`, or one clear error listing the known names."""
    if name not in _REGISTERED:
        _import_builtins()
    if name not in _REGISTERED:
        raise AttackConfigError(
            f"unknown attack {name!r}; choose one of {', '.join(_REGISTERED)} "
            "(or register your own with robust.attacks.register_attack)"
        )
    return _REGISTERED[name]


def build_attack(
    name: str, victim: Victim, params: dict[str, Any] | None = None, **extra: Any
) -> Attack:
    """Build attack `name` bound to `victim` with hyper-parameters `params`."""
    try:
        return attack_class(name)(victim, **(params or {}), **extra)
    except TypeError as error:
        raise AttackConfigError(f"attack {name!r}: {error}") from None
