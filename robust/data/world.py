"""The embedded world: a deterministic, offline image-caption dataset of coloured shapes.

Each image holds one to three shapes (shape, colour, size, grid position) on a textured
background and comes with five paraphrased captions and its attribute labels. Every image
is drawn from its own generator seeded by `(seed, split, index)`, so any image can be
regenerated alone and the same seed always gives byte-identical pixels and captions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from robust.data.dataset import ArrayImages, CaptionDataset

SPLITS: dict[str, int] = {"train": 20_000, "val": 1_000, "test-1k": 1_000, "test-5k": 5_000}
# The train split's standard size is SPLITS["train"]; a trainer may draw more train scenes
# (each is seeded by its own index, so the first 20,000 never change), up to this many.
MAX_TRAIN_IMAGES = 1_000_000
_SPLIT_CODES = {"train": 1, "val": 2, "test-1k": 3, "test-5k": 4}

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "pink": (245, 135, 195),
    "cyan": (35, 200, 215),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 232),
    "gray": (128, 128, 128),
    "black": (22, 22, 26),
}
BACKGROUND_STYLES = ("flat", "gradient", "noise")
SIZES = ("small", "large")
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
OBJECT_COUNT_WEIGHTS = (0.2, 0.4, 0.4)
CAPTIONS_PER_IMAGE = 5
TEXTURES = ("plain", "striped", "dotted", "checkered")

_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the upper left", "in the top left"),
    "top": ("at the top", "at the top center", "near the top edge"),
    "top right": ("in the top right corner", "at the upper right", "in the top right"),
    "left": ("on the left", "at the left side", "on the left edge"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right side", "on the right edge"),
    "bottom left": ("in the bottom left corner", "at the lower left", "in the bottom left"),
    "bottom": ("at the bottom", "at the bottom center", "near the bottom edge"),
    "bottom right": ("in the bottom right corner", "at the lower right", "in the bottom right"),
}
_TEXTURE_WORDS = {
    "plain": ("plain", "solid"),
    "striped": ("striped",),
    "dotted": ("dotted", "spotted"),
    "checkered": ("checkered", "checked"),
}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# capital letters drawn as objects in worlds with many object categories; A and I are left
# out because their lower-case names are also English words ("a", "i")
LETTERS = tuple("BCDEFGHJKLMNOPQRSTUVWXYZ")


def letter_shape(letter: str) -> str:
    """The shape name (and caption words) of a capital letter drawn as an object."""
    return f"letter {letter.lower()}"


_SHAPE_WORDS.update({letter_shape(c): (letter_shape(c),) for c in LETTERS})


@dataclass(frozen=True)
class WorldVersion:
    """The knobs one version of the world is drawn with.

    Results made on one version must never mix with another's, so the version's dataset
    name (`world`, `world-v2`) is what stores and caches record as the dataset.
    """

    name: str
    image_size: int
    supersample: int
    object_count_weights: tuple[float, ...]
    background_styles: tuple[str, ...]
    textures: tuple[str, ...]
    # amplitude (0-255) of the fill pattern of textured objects and of background clutter
    texture_contrast: float = 0.0
    # output-pixel period of the fill patterns
    texture_period: float = 4.0
    position_probability: float = 0.95
    # capital letters that join the six shapes as object categories (`letter k`)
    letters: tuple[str, ...] = ()

    @property
    def shapes(self) -> tuple[str, ...]:
        """The object categories this version draws: the six shapes, then its letters."""
        return SHAPES + tuple(letter_shape(c) for c in self.letters)


# 128 px, objects with pixel-scale fill patterns the captions name, cluttered backgrounds
# instead of pixel noise, at least two objects per image; a calibration candidate, not yet
# the zoo's world (robust/zoo/README.md, "World calibration pilots")
_WORLD_V2 = WorldVersion(
    name="world-v2",
    image_size=128,
    supersample=2,
    object_count_weights=(0.0, 0.5, 0.5),
    background_styles=("flat", "gradient", "clutter"),
    textures=TEXTURES,
    texture_contrast=40.0,
    texture_period=2.0,
    position_probability=0.7,
)
WORLD_VERSIONS: dict[str, WorldVersion] = {
    # flat-coloured shapes at 64 px; the version the first zoo was trained on
    "world": WorldVersion(
        name="world",
        image_size=64,
        supersample=4,
        object_count_weights=OBJECT_COUNT_WEIGHTS,
        background_styles=BACKGROUND_STYLES,
        textures=("plain",),
    ),
    "world-v2": _WORLD_V2,
    # world-v2 with 24 letters beside the six shapes and mostly three objects, so that a
    # scene's nearest neighbour in a gallery differs in several claims; the shipped zoo's
    # world (robust/zoo/README.md, "World calibration pilots")
    "world-v3": replace(
        _WORLD_V2, name="world-v3", object_count_weights=(0.0, 0.3, 0.7), letters=LETTERS
    ),
}
# the generator's default: the first world, kept byte for byte so that it stays reproducible
DEFAULT_WORLD = "world"
# the world the shipped toy zoo was trained on, and so the one the shipped specs, the demo
# and the command-line defaults attack it on
ZOO_WORLD = "world-v3"


def world_version(name: str) -> WorldVersion:
    """The world version of a dataset name (`world`, `world-v2`); one line if unknown."""
    if name not in WORLD_VERSIONS:
        raise ValueError(
            f"unknown world version {name!r}; choose one of {', '.join(WORLD_VERSIONS)}"
        )
    return WORLD_VERSIONS[name]


@dataclass(frozen=True)
class WorldObject:
    """One drawn shape and the attributes its captions talk about."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    # None in worlds without textures, so their labels stay as they were
    texture: str | None = None

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]

    def label(self) -> dict:
        label = {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "position": self.position,
            "row": self.row,
            "col": self.col,
        }
        if self.texture is not None:
            label["texture"] = self.texture
        return label


@dataclass(frozen=True)
class WorldScene:
    """Everything needed to draw and caption one image."""

    objects: tuple[WorldObject, ...]
    background: str
    background_style: str

    def label(self) -> dict:
        return {
            "background": self.background,
            "background_style": self.background_style,
            "count": len(self.objects),
            "objects": [obj.label() for obj in self.objects],
        }


def generate_world(
    split: str = "test-1k",
    *,
    seed: int = 0,
    size: int | None = None,
    count: int | None = None,
    version: str = DEFAULT_WORLD,
) -> CaptionDataset:
    """The world split as a CaptionDataset (images in memory, labels attached).

    `count` generates only the first `count` images of the split; image `i` is the same
    whatever `count` is. Only the train split grows past its standard size (up to
    `MAX_TRAIN_IMAGES`), for trainers that need fresh scenes rather than more epochs.
    `size` defaults to the version's native resolution.
    """
    world = world_version(version)
    size = world.image_size if size is None else size
    if split not in SPLITS:
        raise ValueError(f"unknown world split {split!r}; choose one of {', '.join(SPLITS)}")
    if size < 16:
        raise ValueError(f"world image size must be at least 16 pixels, got {size}")
    total = SPLITS[split] if count is None else count
    largest = MAX_TRAIN_IMAGES if split == "train" else SPLITS[split]
    if not 0 < total <= largest:
        raise ValueError(f"count must be in 1..{largest} for split {split!r}, got {count}")

    pixels = np.empty((total, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    caption_image: list[int] = []
    labels: list[dict] = []
    for index in range(total):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        scene = sample_scene(rng, world)
        pixels[index] = render_scene(scene, size, rng, world)
        for caption in caption_scene(scene, rng, world):
            captions.append(caption)
            caption_image.append(index)
        labels.append(scene.label())
    return CaptionDataset(
        name=f"{world.name}:{split}",
        images=ArrayImages(pixels),
        image_ids=tuple(f"{world.name}-{split}-{i:05d}" for i in range(total)),
        captions=tuple(captions),
        caption_image=np.asarray(caption_image, dtype=np.int64),
        labels=tuple(labels),
    )


def sample_scene(
    rng: np.random.Generator, world: WorldVersion = WORLD_VERSIONS[DEFAULT_WORLD]
) -> WorldScene:
    """Draw the attributes of one image: object count, distinct cells, background."""
    weights = world.object_count_weights
    count = int(rng.choice(len(weights), p=weights)) + 1
    cells = rng.choice(9, size=count, replace=False)
    objects = tuple(_sample_object(rng, world, int(cell)) for cell in cells)
    background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    styles = world.background_styles
    style = styles[int(rng.integers(len(styles)))]
    return WorldScene(objects=objects, background=background, background_style=style)


def _sample_object(rng: np.random.Generator, world: WorldVersion, cell: int) -> WorldObject:
    """One object in grid cell `cell`; the draws come in the same order in every version, so
    versions without letters or textures keep their original images."""
    shape = world.shapes[int(rng.integers(len(world.shapes)))]
    color = tuple(COLORS)[int(rng.integers(len(COLORS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    texture = _draw_texture(rng, world)
    if shape.startswith("letter "):
        # a letter's strokes are too thin to carry a fill pattern
        texture = None if texture is None else "plain"
    return WorldObject(shape, color, size, row=cell // 3, col=cell % 3, texture=texture)


def _draw_texture(rng: np.random.Generator, world: WorldVersion) -> str | None:
    """An object's fill pattern; worlds without textures draw nothing from `rng`."""
    if len(world.textures) == 1:
        return None
    return world.textures[int(rng.integers(len(world.textures)))]


def render_scene(
    scene: WorldScene,
    size: int,
    rng: np.random.Generator,
    world: WorldVersion = WORLD_VERSIONS[DEFAULT_WORLD],
) -> np.ndarray:
    """Draw the scene supersampled, downsample with a box filter, add background texture."""
    scale = world.supersample
    canvas = size * scale
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float64)
    base = np.clip(base + rng.uniform(-14, 14, size=3), 0, 255)
    background = np.broadcast_to(base, (canvas, canvas, 3)).copy()
    if scene.background_style == "gradient":
        ramp = np.linspace(-1.0, 1.0, canvas)[:, None, None] * rng.uniform(18, 36)
        background += ramp if rng.random() < 0.5 else ramp.transpose(1, 0, 2)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    if scene.background_style == "clutter":
        _draw_clutter(draw, base, canvas, scale, world.texture_contrast, rng)
    cell = canvas / 3
    for obj in scene.objects:
        radius = cell * (0.22 if obj.size == "small" else 0.40) * rng.uniform(0.92, 1.08)
        slack = cell / 2 - radius
        cx = (obj.col + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        cy = (obj.row + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        color = np.clip(np.array(COLORS[obj.color]) + rng.integers(-12, 13, size=3), 0, 255)
        fill = tuple(int(c) for c in color)
        if obj.texture in (None, "plain"):
            _draw_shape(draw, obj.shape, cx, cy, radius, fill)
            continue
        mask = Image.new("L", (canvas, canvas), 0)
        _draw_shape(ImageDraw.Draw(mask), obj.shape, cx, cy, radius, (255,))
        pattern = _fill_pattern(obj.texture, canvas, world.texture_period * scale, rng)
        texture = np.clip(
            color[None, None, :] + world.texture_contrast * pattern[..., None], 0, 255
        )
        image.paste(Image.fromarray(texture.astype(np.uint8), mode="RGB"), (0, 0), mask)
    small = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float64)
    if scene.background_style == "noise":
        pixels = pixels + rng.normal(0.0, 7.0, size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _fill_pattern(texture: str, canvas: int, period: float, rng: np.random.Generator) -> np.ndarray:
    """A +-1 fill pattern over the canvas with a random phase (and stripe direction)."""
    y, x = np.mgrid[0:canvas, 0:canvas].astype(np.float64)
    x = x + rng.uniform(0, period)
    y = y + rng.uniform(0, period)
    if texture == "striped":
        angle = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)[int(rng.integers(4))]
        phase = x * np.cos(angle) + y * np.sin(angle)
        return np.where(np.sin(2 * np.pi * phase / period) >= 0, 1.0, -1.0)
    if texture == "dotted":
        dx = np.mod(x, period) - period / 2
        dy = np.mod(y, period) - period / 2
        return np.where(dx**2 + dy**2 <= (period * 0.3) ** 2, 1.0, -1.0)
    if texture == "checkered":
        cells = np.floor(x / period) + np.floor(y / period)
        return np.where(np.mod(cells, 2) == 0, 1.0, -1.0)
    raise ValueError(f"unknown texture {texture!r}")


def _draw_clutter(
    draw: ImageDraw.ImageDraw,
    base: np.ndarray,
    canvas: int,
    scale: int,
    contrast: float,
    rng: np.random.Generator,
) -> None:
    """Uncaptioned grey lines and rings a little lighter or darker than the background."""
    for _ in range(int(rng.integers(10, 21))):
        shade = np.clip(base + rng.uniform(-contrast, contrast), 0, 255)
        fill = tuple(int(c) for c in shade)
        x0, y0, x1, y1 = rng.uniform(0, canvas, size=4)
        if rng.random() < 0.6:
            draw.line([x0, y0, x1, y1], fill=fill, width=int(scale * rng.integers(1, 3)))
        else:
            r = rng.uniform(2, 8) * scale
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=fill, width=scale)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    radius: float,
    color: tuple[int, ...],
) -> None:
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
    elif shape == "square":
        half = radius * 0.86
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=color)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + radius * 0.15, radius * 1.1, 3), fill=color)
    elif shape == "diamond":
        draw.polygon(_regular_polygon(cx, cy, radius, 4), fill=color)
    elif shape == "star":
        draw.polygon(_star(cx, cy, radius), fill=color)
    elif shape == "cross":
        arm = radius * 0.34
        draw.rectangle([cx - radius, cy - arm, cx + radius, cy + arm], fill=color)
        draw.rectangle([cx - arm, cy - radius, cx + arm, cy + radius], fill=color)
    elif shape.startswith("letter "):
        _draw_letter(draw, shape[-1].upper(), cx, cy, radius, color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_letter(
    draw: ImageDraw.ImageDraw,
    letter: str,
    cx: float,
    cy: float,
    radius: float,
    color: tuple[int, ...],
) -> None:
    """A bold capital about as tall as the shape of the same radius (Pillow's embedded font,
    so rendering needs no font file and is the same wherever the pinned Pillow runs)."""
    font = ImageFont.load_default(size=max(8, round(radius * 2.2)))
    stroke = max(1, round(radius / 9))
    draw.text(
        (cx, cy), letter, fill=color, font=font, anchor="mm", stroke_width=stroke, stroke_fill=color
    )


def _regular_polygon(cx: float, cy: float, radius: float, sides: int) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + 2 * np.pi * np.arange(sides) / sides
    return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + np.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]


def caption_scene(
    scene: WorldScene,
    rng: np.random.Generator,
    world: WorldVersion = WORLD_VERSIONS[DEFAULT_WORLD],
) -> list[str]:
    """Five distinct paraphrases; each names every object's colour and shape."""
    captions: list[str] = []
    attempts = 0
    while len(captions) < CAPTIONS_PER_IMAGE:
        caption = _one_caption(scene, rng, world.position_probability)
        attempts += 1
        if caption not in captions or attempts > 50:
            captions.append(caption)
    return captions


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(obj: WorldObject, rng: np.random.Generator, *, with_position: bool) -> str:
    words = []
    if rng.random() < 0.85:
        words.append(_pick(rng, _SIZE_WORDS[obj.size]))
    words.append(obj.color)
    if obj.texture == "plain":
        # plain fills are named only sometimes, as a real caption might
        if rng.random() < 0.3:
            words.append(_pick(rng, _TEXTURE_WORDS["plain"]))
    elif obj.texture is not None:
        words.append(_pick(rng, _TEXTURE_WORDS[obj.texture]))
    words.append(_pick(rng, _SHAPE_WORDS[obj.shape]))
    phrase = " ".join(words)
    article = "an" if phrase[0] in "aeiou" else "a"
    phrase = f"{article} {phrase}"
    if with_position:
        phrase = f"{phrase} {_pick(rng, _POSITION_PHRASES[obj.position])}"
    return phrase


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _one_caption(scene: WorldScene, rng: np.random.Generator, position_probability: float) -> str:
    order = rng.permutation(len(scene.objects))
    with_position = rng.random() < position_probability
    phrases = [_object_phrase(scene.objects[i], rng, with_position=with_position) for i in order]
    body = _join(phrases)
    background = scene.background
    count = len(scene.objects)
    if count == 1:
        templates = (
            "{body}",
            "an image of {body}",
            "there is {body}",
            "{body} on a {bg} background",
            "a picture showing {body}",
            "{body} against a {bg} backdrop",
        )
    else:
        templates = (
            "{body}",
            "{n} shapes: {body}",
            "an image with {body}",
            "{body} on a {bg} background",
            "a picture of {n} objects, {body}",
            "{body} against a {bg} backdrop",
        )
    template = _pick(rng, templates)
    return template.format(body=body, bg=background, n=_COUNT_WORDS[count])


def caption_vocabulary(version: str = DEFAULT_WORLD) -> dict[str, dict[str, tuple[str, ...]]]:
    """The words a version's captions use for each colour and shape, so captions can be
    parsed back into world attributes (caption-bias measurements)."""
    return {
        "color": {color: (color,) for color in COLORS},
        "shape": {shape: _SHAPE_WORDS[shape] for shape in world_version(version).shapes},
    }


def confusable_words(version: str = DEFAULT_WORLD) -> dict[str, tuple[str, ...]]:
    """For each attribute word a version's captions use, the words that name another value of
    the same attribute (`red` -> every other colour word), so caption noise can make one claim
    wrong."""
    attributes = {**caption_vocabulary(version), "size": _SIZE_WORDS, "texture": _TEXTURE_WORDS}
    confusable: dict[str, tuple[str, ...]] = {}
    for values in attributes.values():
        for value, words in values.items():
            others = tuple(w for other, ws in values.items() if other != value for w in ws)
            for word in words:
                confusable[word] = others
    return confusable


def attribute_swaps(caption: str, version: str = DEFAULT_WORLD) -> list[tuple[str, str]]:
    """Every caption one attribute name away from `caption`: (the name replaced, the new
    caption) for each colour, shape, size or fill name it uses (names may span words, as
    "letter q" does) and each other value of that attribute. These are the one-word swaps
    BERT-Attack can reach on the world, so they measure what one wrong word costs."""
    words = caption.split(" ")
    swaps = []
    for name, others in confusable_words(version).items():
        span = name.split(" ")
        for start in range(len(words) - len(span) + 1):
            if words[start : start + len(span)] == span:
                for other in others:
                    swapped = [*words[:start], *other.split(" "), *words[start + len(span) :]]
                    swaps.append((name, " ".join(swapped)))
    return swaps


@dataclass(frozen=True)
class CaptionClaim:
    """What a world caption asserts: per object (size or None, colour, shape, position or
    None), the background when it names one, and per object the fill texture it names
    (None where it names none)."""

    objects: tuple[tuple[str | None, str, str, str | None], ...]
    background: str | None
    textures: tuple[str | None, ...] = ()


_PREFIXES = (
    "an image of ",
    "there is ",
    "a picture showing ",
    "an image with ",
    *(f"{word} shapes: " for word in _COUNT_WORDS.values()),
    *(f"a picture of {word} objects, " for word in _COUNT_WORDS.values()),
)


def parse_caption(caption: str) -> CaptionClaim:
    """Read a world caption back into its claims; ValueError if it is not one."""
    body, background = _caption_body(caption)
    head, _, last = body.rpartition(" and ")
    phrases = [*head.split(", "), last] if head else [last]
    return _claim([_parse_object(p, caption) for p in phrases], background)


def read_claims(caption: str) -> CaptionClaim:
    """The claims of a generated caption that read as world phrases, the rest left out.

    A captioner's output may stop mid-phrase at its length limit ("..., a little orange")
    or stray from the world's grammar; every object phrase that reads is kept as
    `parse_caption` would read it, so the claims are the ones the caption does make (none
    when nothing reads).
    """
    body, background = _caption_body(caption.strip().rstrip(","))
    parsed = []
    for phrase in (part for text in body.split(", ") for part in text.split(" and ")):
        try:
            parsed.append(_parse_object(phrase, caption))
        except ValueError:
            continue
    return _claim(parsed, background)


def _caption_body(caption: str) -> tuple[str, str | None]:
    """A caption's object phrases as one text and the background it names, its template
    taken off."""
    text = caption
    background = None
    for background_name in BACKGROUNDS:
        for suffix in (
            f" on a {background_name} background",
            f" against a {background_name} backdrop",
        ):
            if text.endswith(suffix):
                text, background = text[: -len(suffix)], background_name
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    return text, background


def _claim(
    parsed: list[tuple[tuple[str | None, str, str, str | None], str | None]],
    background: str | None,
) -> CaptionClaim:
    return CaptionClaim(
        tuple(claim for claim, _ in parsed),
        background,
        tuple(texture for _, texture in parsed),
    )


def _parse_object(
    phrase: str, caption: str
) -> tuple[tuple[str | None, str, str, str | None], str | None]:
    words = phrase.split(" ")
    if words[0] not in ("a", "an") or len(words) < 3:
        raise ValueError(f"not a world caption: {caption!r}")
    words = words[1:]
    size = next((s for s, options in _SIZE_WORDS.items() if words[0] in options), None)
    if size is not None:
        words = words[1:]
    color = words[0]
    words = words[1:]
    first = words[0] if words else ""
    texture = next((t for t, options in _TEXTURE_WORDS.items() if first in options), None)
    if texture is not None:
        words = words[1:]
    rest = " ".join(words)
    for shape, options in _SHAPE_WORDS.items():
        for option in options:
            if rest == option or rest.startswith(option + " "):
                place = rest[len(option) :].strip()
                position = next(
                    (p for p, phrases in _POSITION_PHRASES.items() if place in phrases), None
                )
                if color not in COLORS or (place and position is None):
                    raise ValueError(f"not a world caption: {caption!r}")
                return (size, color, shape, position), texture
    raise ValueError(f"not a world caption: {caption!r}")


def caption_fits_scene(claim: CaptionClaim, label: dict, *, complete: bool = True) -> bool:
    """Whether every claim of a caption is true of a scene (its `label()`): the same
    number of objects, each claimed object matched to a distinct one, background agreeing.
    A caption that leaves out sizes or positions fits every scene that differs only there;
    with `complete=False` it may leave out whole objects too (a caption cut short)."""
    objects = label["objects"]
    if len(claim.objects) > len(objects) or (complete and len(claim.objects) < len(objects)):
        return False
    if claim.background is not None and claim.background != label["background"]:
        return False

    textures = claim.textures or (None,) * len(claim.objects)

    def fits(index: int, obj: dict) -> bool:
        size, color, shape, position = claim.objects[index]
        return (
            color == obj["color"]
            and shape == obj["shape"]
            and size in (None, obj["size"])
            and position in (None, obj["position"])
            and textures[index] in (None, obj.get("texture", "plain"))
        )

    def assign(index: int, free: tuple[int, ...]) -> bool:
        if index == len(claim.objects):
            return True
        return any(
            fits(index, objects[o]) and assign(index + 1, free[:k] + free[k + 1 :])
            for k, o in enumerate(free)
        )

    return assign(0, tuple(range(len(objects))))
