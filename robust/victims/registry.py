"""The victim registry: families by spec prefix, named victims, and `load_victim`.

A family registers where it is defined (timm's `register_model` habit): its spec prefix,
the Victim class it builds, its loader, a check of the files the loader will read (without
loading them) and how to read its resolution from a spec without loading weights. Named
victims state only name, spec and description; family, resolution and capabilities come
from their family. A user's family registers the same way from their own code and is then
named in a spec as `prefix:argument`. The toy zoo goes through exactly the same loaders as
real checkpoints.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from robust.errors import RobustError, UnknownVictimError
from robust.resources import ZOO_DIR

if TYPE_CHECKING:  # resolving names must not load torch (the report resolves specs)
    from robust.victims.base import Victim

Loader = Callable[[str, str | None], "Victim"]
Checker = Callable[[str, str | None], None]
SizeReader = Callable[[str, str | None], int | None]

# modules whose import registers the built-in families
BUILTIN_FAMILY_MODULES: tuple[str, ...] = (
    "robust.victims.openclip",
    "robust.victims.hf_clip",
    "robust.victims.albef",
    "robust.victims.blip",
    "robust.defenses.defended",
)


@dataclass(frozen=True)
class VictimFamily:
    """What a spec prefix builds: the family tag, its Victim class and how to load it."""

    prefix: str
    family: str
    victim_class: type[Victim]
    load: Loader
    check: Checker
    read_image_size: SizeReader | None

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The class's capabilities in the contract's order (itc, itm, caption)."""
        from robust.victims.base import Capability

        return tuple(c for c in get_args(Capability) if c in self.victim_class.capabilities)


_FAMILIES: dict[str, VictimFamily] = {}


def register_victim_family(
    prefix: str,
    victim_class: type[Victim],
    *,
    load: Loader,
    check: Checker,
    image_size: SizeReader | None = None,
    family: str | None = None,
) -> VictimFamily:
    """Make specs `prefix:argument` load through `load(argument, display name)`.

    `check` raises the error `load` would for missing or broken files, without loading them;
    `image_size` reads the resolution from the spec alone (None: the listing shows it as
    unknown); `family` defaults to the class's own `family`.
    """
    from robust.victims.base import Victim

    if not prefix or ":" in prefix or prefix != prefix.strip():
        raise RobustError(f"victim family prefix {prefix!r} must be a word without ':'")
    if not (isinstance(victim_class, type) and issubclass(victim_class, Victim)):
        raise RobustError(f"{victim_class!r} is not a Victim subclass; derive it from Victim")
    entry = VictimFamily(
        prefix, family or victim_class.family, victim_class, load, check, image_size
    )
    if getattr(load, "__module__", None) not in BUILTIN_FAMILY_MODULES:  # a user's family
        _import_builtins()
    taken = _FAMILIES.get(prefix)
    # the same definition run again (a reloaded module, a re-run notebook cell) replaces its
    # earlier self; another class under a taken prefix is refused
    if taken is not None and _qualified(taken.victim_class) != _qualified(victim_class):
        raise RobustError(
            f"victim family prefix {prefix!r} is already registered for "
            f"{taken.victim_class.__qualname__}; choose another prefix"
        )
    _FAMILIES[prefix] = entry
    return entry


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_builtins() -> None:
    for module in BUILTIN_FAMILY_MODULES:
        importlib.import_module(module)


def victim_families() -> tuple[VictimFamily, ...]:
    """Every registered family: the built-in ones, then any registered by users."""
    _import_builtins()
    return tuple(_FAMILIES.values())


def victim_family(prefix: str) -> VictimFamily | None:
    """The family registered under a spec prefix, or None."""
    if prefix not in _FAMILIES:
        _import_builtins()
    return _FAMILIES.get(prefix)


@dataclass(frozen=True)
class VictimEntry:
    """A named victim: its spec and what it is; the rest comes from its family."""

    name: str
    spec: str
    description: str

    @property
    def family(self) -> str:
        return _split_spec(self.name)[0].family

    @property
    def capabilities(self) -> tuple[str, ...]:
        return _split_spec(self.name)[0].capabilities

    @property
    def image_size(self) -> int | None:
        """The resolution its family reads from the spec (None where it cannot tell)."""
        return spec_image_size(self.name)


_ZOO = "toy zoo: tiny {what} trained on the world"

KNOWN_VICTIMS: dict[str, VictimEntry] = {
    entry.name: entry
    for entry in (
        VictimEntry(
            "clip-vit-b16",
            "open_clip:ViT-B-16-quickgelu@openai",
            "OpenAI CLIP ViT-B/16 (SGA's CLIP-ViT)",
        ),
        VictimEntry(
            "clip-rn101",
            "open_clip:RN101-quickgelu@openai",
            "OpenAI CLIP ResNet-101 (SGA's CLIP-CNN)",
        ),
        VictimEntry(
            "clip-vit-b32",
            "open_clip:ViT-B-32-quickgelu@openai",
            "OpenAI CLIP ViT-B/32 (AnyAttack's encoder)",
        ),
        VictimEntry("clip-vit-l14", "open_clip:ViT-L-14-quickgelu@openai", "OpenAI CLIP ViT-L/14"),
        *(
            VictimEntry(
                f"{method}{eps}-clip-vit-l14",
                f"open_clip:hf-hub:chs20/{method}{eps}-clip",
                f"{title} adversarially fine-tuned CLIP ViT-L/14 (ImageNet, L-inf {eps}/255)",
            )
            for method, title in (("tecoa", "TeCoA"), ("fare", "FARE"))
            for eps in (2, 4)
        ),
        VictimEntry(
            "albef-flickr",
            "albef:albef-flickr/flickr30k.pth",
            "ALBEF fine-tuned for Flickr30k retrieval",
        ),
        VictimEntry(
            "albef-coco", "albef:albef-coco/mscoco.pth", "ALBEF fine-tuned for MSCOCO retrieval"
        ),
        VictimEntry(
            "tcl-flickr", "tcl:tcl-flickr/checkpoint.pth", "TCL fine-tuned for Flickr30k retrieval"
        ),
        VictimEntry(
            "tcl-coco", "tcl:tcl-coco/checkpoint.pth", "TCL fine-tuned for MSCOCO retrieval"
        ),
        *(
            VictimEntry(
                name,
                f"hf-blip:Salesforce/{name}",
                f"BLIP {name.split('-')[2]} retrieval ({name.split('-')[3]})",
            )
            for name in (
                "blip-itm-base-coco",
                "blip-itm-base-flickr",
                "blip-itm-large-coco",
                "blip-itm-large-flickr",
            )
        ),
        VictimEntry(
            "blip-cap-base",
            "hf-blip-cap:Salesforce/blip-image-captioning-base",
            "BLIP base captioner",
        ),
        VictimEntry(
            "blip-cap-large",
            "hf-blip-cap:Salesforce/blip-image-captioning-large",
            "BLIP large captioner",
        ),
        *(
            VictimEntry(name, f"{prefix}:{ZOO_DIR / name / weights}", _ZOO.format(what=what))
            for name, prefix, weights, what in (
                ("toy-clip-vit", "open_clip:local-dir", "", "open_clip ViT"),
                ("toy-clip-rn", "open_clip:local-dir", "", "open_clip ModifiedResNet"),
                ("toy-albef", "albef", "checkpoint.pth", "ALBEF"),
                ("toy-tcl", "tcl", "checkpoint.pth", "TCL"),
                ("toy-blip", "hf-blip", "", "BLIP retrieval model"),
                ("toy-blip-cap", "hf-blip-cap", "", "BLIP captioner"),
            )
        ),
    )
}
# The toy retrieval victims whose checkpoints ship with the package (the demo's victims).
TOY_RETRIEVAL_VICTIMS = ("toy-clip-vit", "toy-clip-rn", "toy-albef", "toy-tcl", "toy-blip")


def resolve_spec(name_or_spec: str | dict) -> tuple[str, str | None]:
    """(spec string, display name) for a registered name, a spec string or a spec dict."""
    if isinstance(name_or_spec, dict):
        if "spec" not in name_or_spec:
            raise UnknownVictimError(
                f"victim dict {name_or_spec!r} has no 'spec' key; write "
                "{'name': ..., 'spec': 'open_clip:ARCH@TAG'}"
            )
        spec = str(name_or_spec["spec"])
        return resolve_spec(spec)[0], name_or_spec.get("name") or spec
    text = str(name_or_spec).strip()
    if text in KNOWN_VICTIMS:
        return KNOWN_VICTIMS[text].spec, text
    prefix, sep, _ = text.partition(":")
    if sep and victim_family(prefix) is not None:
        return text, text
    raise UnknownVictimError(
        f"unknown victim {text!r}; use one of {', '.join(KNOWN_VICTIMS)} or a spec "
        f"({', '.join(f'{f.prefix}:...' for f in victim_families())}); `robust victims` lists "
        "them"
    )


def _split_spec(name_or_spec: str | dict) -> tuple[VictimFamily, str, str | None]:
    """(family, its argument, display name) of a registered name or spec."""
    spec, display = resolve_spec(name_or_spec)
    prefix, _, arg = spec.partition(":")
    if not arg:
        raise UnknownVictimError(f"victim spec {spec!r} is empty after '{prefix}:'")
    family = victim_family(prefix)
    if family is None:  # a named entry whose family nobody registered
        raise UnknownVictimError(f"victim spec {spec!r}: no family is registered for {prefix!r}")
    return family, arg, display


def load_victim(name_or_spec: str | dict, *, device: str = "cpu") -> Victim:
    """Build a victim by registered name or spec, in eval mode on `device`."""
    family, arg, display = _split_spec(name_or_spec)
    victim = family.load(arg, display)
    return victim.to(device).eval()


def check_victim(name_or_spec: str | dict) -> None:
    """Raise the error `load_victim` would for weights that are missing or are not weights,
    without loading them: runs call it for every victim before any work starts."""
    family, arg, display = _split_spec(name_or_spec)
    family.check(arg, display)


def spec_image_size(name_or_spec: str | dict) -> int | None:
    """The resolution a name or spec loads at, read without loading weights (None where its
    family cannot tell)."""
    family, arg, display = _split_spec(name_or_spec)
    return None if family.read_image_size is None else family.read_image_size(arg, display)


def weights_present(entry: VictimEntry) -> bool:
    """Whether `load_victim(entry.name)` would find its weights on this machine."""
    try:
        check_victim(entry.name)
    except RobustError:
        return False
    return True


def list_victims() -> list[VictimEntry]:
    """Every registered victim, in registry order."""
    return list(KNOWN_VICTIMS.values())
