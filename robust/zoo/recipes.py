"""Recipes for the toy zoo: architecture and training settings of each member."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from robust.errors import RobustError
from robust.victims.hf_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

WORLD_IMAGE_SIZE = 64
TEXT_CFG = {"context_length": 40, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3}
# The CLIP text context on any world but the shipped one: world-v2's and world-v3's longest
# train captions take 46 and 43 BPE tokens with start and end, past the shipped 40.
OTHER_WORLD_CONTEXT_LENGTH = 64


def known_world(version: str) -> str:
    """`version` itself when it names a world version; otherwise one RobustError line."""
    world_image_size(version)  # raises for an unknown version
    return version


def world_image_size(version: str) -> int:
    """The image side of world `version`; an unknown version is one RobustError line."""
    from robust.data.world import world_version

    try:
        return world_version(version).image_size
    except ValueError as error:
        raise RobustError(f"--world: {error}") from None


def patch_for_size(patch_size: int, image_size: int, new_image_size: int) -> int:
    """The ViT patch side at `new_image_size` that keeps the tower's token count (and so
    its compute): 64 px / patch 8 becomes 128 px / patch 16."""
    return patch_size * new_image_size // image_size


@dataclass(frozen=True)
class ClipRecipe:
    """A tiny open_clip model and the contrastive schedule that trains it on world train."""

    name: str
    model_cfg: dict
    epochs: int = 15
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    seed: int = 0
    train_images: int | None = None
    # the world version trained on (robust.data.world.WORLD_VERSIONS)
    world: str = "world"
    # the share of a training caption's words dropped, and the share swapped for a random
    # world word, each time it is drawn (robust.zoo.augment.noisy_caption), so that no
    # single word decides a match (real captions are noisy and carry redundant cues)
    caption_word_dropout: float = 0.0
    caption_word_swap: float = 0.0
    # the share of training captions drawn with one attribute word naming a wrong value
    # (robust.data.world.confusable_words): annotators' slips, which real data is full of
    caption_attribute_noise: float = 0.0
    # Random Erasing (robust.zoo.augment.random_erasing): the share of training images
    # that get one uniform-noise rectangle of `erase_area` of their area.
    erase_probability: float = 0.0
    erase_area: tuple[float, float] = (0.01, 0.08)
    # A supervised start for the image tower before the contrastive epochs: this many epochs
    # of multi-label binary cross-entropy on what each scene holds
    # (robust.zoo.scene_attributes), through a linear head on the image embedding, at
    # `attribute_learning_rate`. Contrastive training from scratch teaches the towers a
    # scene's colours and nothing else; this stage teaches them every attribute first, as
    # real ALBEF and TCL start from a DeiT trained with labels.
    attribute_epochs: int = 0
    attribute_learning_rate: float = 2e-3
    # the weight of the same attribute loss kept beside InfoNCE in the contrastive epochs
    # (the head carries over), so that what the tower learnt first is not trained away
    attribute_weight: float = 0.0
    # the same head also reads each caption's embedding and must find its scene's attributes
    # there: a tower that knows shapes is not enough when InfoNCE lets the text side match
    # by colour alone, and one shared head puts each attribute in the same direction of
    # both embeddings
    attribute_text: bool = False
    # the kinds of attribute the head learns (shape, color, size, position, texture,
    # background, count); None for all. A tower taught every kind at once learns the easy
    # ones (colours, sizes, positions) and barely starts on shapes.
    attribute_kinds: tuple[str, ...] | None = None
    # A zoo member or open_clip local-dir folder to start from instead of random weights
    # (the schedule then runs as a fine-tune of it).
    init: str | None = None
    # Saved in fp16 (as OpenAI's own CLIP release is) to keep the shipped file small; the
    # model is rebuilt in fp32 on load.
    save_dtype: str = "float16"
    preprocess_cfg: dict = field(
        default_factory=lambda: {
            "size": WORLD_IMAGE_SIZE,
            "mode": "RGB",
            "mean": list(OPENAI_CLIP_MEAN),
            "std": list(OPENAI_CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
    )

    def config(self) -> dict:
        return asdict(self)

    def for_world(self, version: str) -> ClipRecipe:
        """This recipe on world `version`: the version's image size (a ViT's patch scaled
        with it), a text context that fits its captions and the version's calibrated
        schedule if it has one; unchanged on its own world."""
        if version == self.world:
            return self
        size = world_image_size(version)
        vision = dict(self.model_cfg["vision_cfg"], image_size=size)
        if vision["patch_size"] is not None:
            vision["patch_size"] = patch_for_size(
                vision["patch_size"], self.model_cfg["vision_cfg"]["image_size"], size
            )
        text = dict(self.model_cfg["text_cfg"])
        text["context_length"] = max(text["context_length"], OTHER_WORLD_CONTEXT_LENGTH)
        model_cfg = {**self.model_cfg, "vision_cfg": vision, "text_cfg": text}
        preprocess_cfg = dict(self.preprocess_cfg, size=size)
        schedule = CALIBRATED_SCHEDULES.get(version, {}).get(self.name, {})
        return replace(
            self, world=version, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg, **schedule
        )


# The schedules the CLIP toys train with on a world whose calibration pilots chose one
# (robust/zoo/README.md, "World calibration pilots"). Trained contrastively, a toy reads a
# scene's colours and nothing of its shapes. On world-v3 the ViT first learns which object
# categories a scene holds from fresh scenes (it overfits 20,000 before it learns them), then
# one contrastive epoch keeps that head on both embeddings (pilot VL). The ResNet starts on
# every attribute (pilot Z); the shipped one is then fine-tuned with a shape head on both
# embeddings (pilot ZS: `--init` it with `--attribute-epochs 5 --attribute-kinds shape
# --attribute-text --epochs 3`), which the zoo README gives as a second command.
# toy-blip's ITM on world-v3 must beat an ITC that already ranks 9 in 10 right; its only
# own weights are the cross-attention layers, which start at BERT's 0.02 there (at 0.1 ITM
# re-ranked worse: pilots B, D), learn 10x faster than the rest, with ITM counted
# twice, for 12 epochs instead of 6 (pilot E; `text` entries update the text config).
CALIBRATED_SCHEDULES: dict[str, dict[str, dict]] = {
    "world-v3": {
        "toy-clip-vit": {
            "train_images": 160_000,
            "attribute_epochs": 5,
            "attribute_kinds": ("shape",),
            "attribute_weight": 0.5,
            "attribute_text": True,
            "epochs": 1,
            "learning_rate": 5e-4,
        },
        "toy-clip-rn": {
            "attribute_epochs": 6,
            "attribute_weight": 0.5,
            "epochs": 4,
            "learning_rate": 5e-4,
        },
        "toy-blip": {
            "text": {"initializer_range": 0.02},
            "fusion_lr_scale": 10.0,
            "itm_weight": 2.0,
            "epochs": 12,
        },
    },
}


RECIPES: dict[str, ClipRecipe] = {
    "toy-clip-vit": ClipRecipe(
        name="toy-clip-vit",
        model_cfg={
            "embed_dim": 64,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": WORLD_IMAGE_SIZE,
                "layers": 4,
                "width": 96,
                "patch_size": 8,
                "head_width": 32,
                "mlp_ratio": 3.0,
            },
            "text_cfg": dict(TEXT_CFG),
        },
        erase_probability=0.5,
    ),
    "toy-clip-rn": ClipRecipe(
        name="toy-clip-rn",
        model_cfg={
            "embed_dim": 64,
            "quick_gelu": True,
            "vision_cfg": {
                "image_size": WORLD_IMAGE_SIZE,
                "layers": [1, 1, 1, 1],
                "width": 16,
                "patch_size": None,
                "head_width": 32,
            },
            "text_cfg": dict(TEXT_CFG),
        },
        erase_probability=0.5,
    ),
}
