"""The victim registry: known names, spec strings, and `load_victim`.

Names map to spec strings (`open_clip:ViT-B-16-quickgelu@openai`, `hf-clip:<id or dir>`,
`open_clip:local-dir:<dir>`); each spec prefix maps to the family loader that reads it. The
toy zoo goes through exactly the same loaders as real checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robust.errors import RobustError, UnknownVictimError
from robust.resources import ZOO_DIR
from robust.victims.base import Victim

Loader = Callable[[str, str | None], Victim]
Checker = Callable[[str, str | None], None]


@dataclass(frozen=True)
class VictimEntry:
    """A named victim: what it is and where its weights come from."""

    name: str
    spec: str
    family: str
    image_size: int
    capabilities: tuple[str, ...]
    description: str


def _open_clip(arg: str, name: str | None) -> Victim:
    from robust.victims.openclip import OpenClipVictim

    return OpenClipVictim.from_spec(arg, name)


def _hf_clip(arg: str, name: str | None) -> Victim:
    from robust.victims.hf_clip import HFClipVictim

    return HFClipVictim.from_spec(arg, name)


def _albef(arg: str, name: str | None) -> Victim:
    from robust.victims.albef import load_albef_spec

    return load_albef_spec(arg, name)


def _tcl(arg: str, name: str | None) -> Victim:
    from robust.victims.albef import load_tcl_spec

    return load_tcl_spec(arg, name)


def _hf_blip(arg: str, name: str | None) -> Victim:
    from robust.victims.blip import load_blip_retrieval

    return load_blip_retrieval(arg, name)


def _hf_blip_cap(arg: str, name: str | None) -> Victim:
    from robust.victims.blip import load_blip_captioner

    return load_blip_captioner(arg, name)


def _defended(arg: str, name: str | None) -> Victim:
    from robust.defenses.defended import load_defended_spec

    return load_defended_spec(arg, name)


def _check_open_clip(arg: str, name: str | None) -> None:
    from robust.victims.openclip import check_open_clip_spec

    check_open_clip_spec(arg, name)


def _check_albef_family(family: str) -> Checker:
    def check(arg: str, name: str | None) -> None:
        from robust.victims.albef import check_albef_spec

        check_albef_spec(arg, name, family=family)

    return check


def _check_hf_folder(prefix: str) -> Checker:
    def check(arg: str, name: str | None) -> None:
        from robust.victims.weights import locate_hf_model_dir

        locate_hf_model_dir(arg, name or f"{prefix}:{arg}")

    return check


def _check_defended(arg: str, name: str | None) -> None:
    from robust.defenses.defended import check_defended_spec

    check_defended_spec(arg, name)


LOADERS: dict[str, Loader] = {
    "open_clip": _open_clip,
    "hf-clip": _hf_clip,
    "albef": _albef,
    "tcl": _tcl,
    "hf-blip": _hf_blip,
    "hf-blip-cap": _hf_blip_cap,
    "defended": _defended,
}

# What each loader will read, checked without loading it (same prefixes as LOADERS).
CHECKERS: dict[str, Checker] = {
    "open_clip": _check_open_clip,
    "hf-clip": _check_hf_folder("hf-clip"),
    "albef": _check_albef_family("albef"),
    "tcl": _check_albef_family("tcl"),
    "hf-blip": _check_hf_folder("hf-blip"),
    "hf-blip-cap": _check_hf_folder("hf-blip-cap"),
    "defended": _check_defended,
}

_CLIP = ("itc",)
_FUSION = ("itc", "itm")
_CAPTION = ("caption",)
_ZOO = "toy zoo: tiny {what} trained on the world"

KNOWN_VICTIMS: dict[str, VictimEntry] = {
    entry.name: entry
    for entry in (
        VictimEntry(
            "clip-vit-b16",
            "open_clip:ViT-B-16-quickgelu@openai",
            "clip",
            224,
            _CLIP,
            "OpenAI CLIP ViT-B/16 (SGA's CLIP-ViT)",
        ),
        VictimEntry(
            "clip-rn101",
            "open_clip:RN101-quickgelu@openai",
            "clip",
            224,
            _CLIP,
            "OpenAI CLIP ResNet-101 (SGA's CLIP-CNN)",
        ),
        VictimEntry(
            "clip-vit-b32",
            "open_clip:ViT-B-32-quickgelu@openai",
            "clip",
            224,
            _CLIP,
            "OpenAI CLIP ViT-B/32 (AnyAttack's encoder)",
        ),
        VictimEntry(
            "clip-vit-l14",
            "open_clip:ViT-L-14-quickgelu@openai",
            "clip",
            224,
            _CLIP,
            "OpenAI CLIP ViT-L/14",
        ),
        *(
            VictimEntry(
                f"{method}{eps}-clip-vit-l14",
                f"open_clip:hf-hub:chs20/{method}{eps}-clip",
                "clip",
                224,
                _CLIP,
                f"{title} adversarially fine-tuned CLIP ViT-L/14 (ImageNet, L-inf {eps}/255)",
            )
            for method, title in (("tecoa", "TeCoA"), ("fare", "FARE"))
            for eps in (2, 4)
        ),
        VictimEntry(
            "albef-flickr",
            "albef:albef-flickr/flickr30k.pth",
            "albef",
            384,
            _FUSION,
            "ALBEF fine-tuned for Flickr30k retrieval",
        ),
        VictimEntry(
            "albef-coco",
            "albef:albef-coco/mscoco.pth",
            "albef",
            384,
            _FUSION,
            "ALBEF fine-tuned for MSCOCO retrieval",
        ),
        VictimEntry(
            "tcl-flickr",
            "tcl:tcl-flickr/checkpoint.pth",
            "tcl",
            384,
            _FUSION,
            "TCL fine-tuned for Flickr30k retrieval",
        ),
        VictimEntry(
            "tcl-coco",
            "tcl:tcl-coco/checkpoint.pth",
            "tcl",
            384,
            _FUSION,
            "TCL fine-tuned for MSCOCO retrieval",
        ),
        *(
            VictimEntry(
                name,
                f"hf-blip:Salesforce/{name}",
                "blip",
                384,
                _FUSION,
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
            "blip",
            384,
            _CAPTION,
            "BLIP base captioner",
        ),
        VictimEntry(
            "blip-cap-large",
            "hf-blip-cap:Salesforce/blip-image-captioning-large",
            "blip",
            384,
            _CAPTION,
            "BLIP large captioner",
        ),
        VictimEntry(
            "toy-clip-vit",
            f"open_clip:local-dir:{ZOO_DIR / 'toy-clip-vit'}",
            "clip",
            64,
            _CLIP,
            _ZOO.format(what="open_clip ViT"),
        ),
        VictimEntry(
            "toy-clip-rn",
            f"open_clip:local-dir:{ZOO_DIR / 'toy-clip-rn'}",
            "clip",
            64,
            _CLIP,
            _ZOO.format(what="open_clip ModifiedResNet"),
        ),
        VictimEntry(
            "toy-albef",
            f"albef:{ZOO_DIR / 'toy-albef' / 'checkpoint.pth'}",
            "albef",
            64,
            _FUSION,
            _ZOO.format(what="ALBEF"),
        ),
        VictimEntry(
            "toy-tcl",
            f"tcl:{ZOO_DIR / 'toy-tcl' / 'checkpoint.pth'}",
            "tcl",
            64,
            _FUSION,
            _ZOO.format(what="TCL"),
        ),
        VictimEntry(
            "toy-blip",
            f"hf-blip:{ZOO_DIR / 'toy-blip'}",
            "blip",
            64,
            _FUSION,
            _ZOO.format(what="BLIP retrieval model"),
        ),
        VictimEntry(
            "toy-blip-cap",
            f"hf-blip-cap:{ZOO_DIR / 'toy-blip-cap'}",
            "blip",
            64,
            _CAPTION,
            _ZOO.format(what="BLIP captioner"),
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
    if sep and prefix in LOADERS:
        return text, text
    raise UnknownVictimError(
        f"unknown victim {text!r}; use one of {', '.join(KNOWN_VICTIMS)} or a spec "
        f"({', '.join(p + ':...' for p in LOADERS)}); `robust victims` lists them"
    )


def _split_spec(name_or_spec: str | dict) -> tuple[str, str, str | None]:
    """(loader prefix, its argument, display name) of a registered name or spec."""
    spec, display = resolve_spec(name_or_spec)
    prefix, _, arg = spec.partition(":")
    if not arg:
        raise UnknownVictimError(f"victim spec {spec!r} is empty after '{prefix}:'")
    return prefix, arg, display


def load_victim(name_or_spec: str | dict, *, device: str = "cpu") -> Victim:
    """Build a victim by registered name or spec, in eval mode on `device`."""
    prefix, arg, display = _split_spec(name_or_spec)
    victim = LOADERS[prefix](arg, display)
    return victim.to(device).eval()


def check_victim(name_or_spec: str | dict) -> None:
    """Raise the error `load_victim` would for weights that are missing or are not weights,
    without loading them: runs call it for every victim before any work starts."""
    prefix, arg, display = _split_spec(name_or_spec)
    CHECKERS[prefix](arg, display)


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
