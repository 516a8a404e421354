"""AnyAttack's noise decoder: a target image's embedding in, an L-inf bounded noise out.

The module tree and parameter names match the released AnyAttack decoders (checkpoint key
`decoder_state_dict`; `fc.0`, `upsample_blocks.{0..8}`, `final_conv`), so their files load
unchanged: 512-d CLIP ViT-B/32 embeddings, 256 channels at 14x14, 224 px. The sizes come
from `DecoderConfig`, so the same class serves the embedded world (64 px, toy embeddings).

The noise is added to *any* clean image: it depends only on the target. How raw outputs
are bounded is part of the decoder's config (see `bound_noise`): decoders trained here use
`eps * tanh(raw)`, smooth and never without gradient; the released decoders were trained
with the hard `clamp(raw, -eps, eps)` (zero gradient wherever the raw output overshoots), so
files without a config are read with that bound, reproducing their noise exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.attacks.base import AttackConfigError
from robust.checkpoints import CheckpointError, read_torch_file, trust_pickle_from_env
from robust.errors import RobustError
from robust.victims.base import Victim

DEFAULT_EPS = 16 / 255
STATE_KEY = "decoder_state_dict"
UPSAMPLINGS = 4  # the decoder doubles its resolution four times: image_size = 16 * init_size
HEADS = 8
BOUNDS: tuple[str, ...] = ("tanh", "clamp")


class DecoderLoadError(CheckpointError):
    """A decoder file that cannot be read as an AnyAttack decoder."""


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder sizes. The defaults are the released decoders' (ViT-B/32, 224 px)."""

    embed_dim: int = 512
    image_size: int = 224
    channels: int = 256
    bound: str = "clamp"

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise AttackConfigError(
                f"unknown noise bound {self.bound!r}; choose one of {', '.join(BOUNDS)}"
            )
        if self.embed_dim < 1:
            raise AttackConfigError(f"embed_dim must be positive, got {self.embed_dim}")
        factor = 2**UPSAMPLINGS
        if self.image_size < factor or self.image_size % factor:
            raise AttackConfigError(
                f"image_size must be a positive multiple of {factor}, got {self.image_size}"
            )
        if self.channels < 4 * factor or self.channels % factor:
            raise AttackConfigError(
                f"channels must be a multiple of {factor} and at least {4 * factor} (halved "
                f"at each of the {UPSAMPLINGS} upsamplings, a quarter of them keys), "
                f"got {self.channels}"
            )

    @property
    def init_size(self) -> int:
        return self.image_size // 2**UPSAMPLINGS

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


class EfficientAttention(nn.Module):
    """Linear attention (Shen et al.): softmax over key positions and query channels per head.

    With fewer key channels than heads a head gets no key channels and contributes zeros;
    the released decoders' last block is like that, and it is reproduced, not fixed.
    """

    def __init__(self, channels: int, key_channels: int, value_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.keys = nn.Conv2d(channels, key_channels, 1)
        self.queries = nn.Conv2d(channels, key_channels, 1)
        self.values = nn.Conv2d(channels, value_channels, 1)
        self.reprojection = nn.Conv2d(value_channels, channels, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = inputs.shape
        head_keys = self.key_channels // HEADS
        head_values = self.value_channels // HEADS
        used_keys, used_values = head_keys * HEADS, head_values * HEADS
        positions = height * width
        keys = self.keys(inputs).flatten(2)[:, :used_keys]
        keys = keys.reshape(batch, HEADS, head_keys, positions)
        queries = self.queries(inputs).flatten(2)[:, :used_keys]
        queries = queries.reshape(batch, HEADS, head_keys, positions)
        values = self.values(inputs).flatten(2)[:, :used_values]
        values = values.reshape(batch, HEADS, head_values, positions)
        context = keys.softmax(dim=-1) @ values.transpose(-1, -2)  # [B, H, dk, dv]
        attended = context.transpose(-1, -2) @ queries.softmax(dim=-2)  # [B, H, dv, HW]
        attended = attended.reshape(batch, used_values, height, width)
        if used_values < self.value_channels:
            missing = self.value_channels - used_values
            attended = F.pad(attended, (0, 0, 0, 0, 0, missing))
        return self.reprojection(attended) + inputs


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers, linear attention, identity skip, LeakyReLU(0.2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.attention = EfficientAttention(channels, channels // 4, channels)
        self.skip_conv = nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(inputs)), 0.2)
        out = self.attention(self.bn2(self.conv2(out)))
        return F.leaky_relu(out + self.skip_conv(inputs), 0.2)


class UpBlock(nn.Module):
    """Nearest-neighbour x2, then 3x3 conv-BN-LeakyReLU halving the channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(inputs, scale_factor=2, mode="nearest")
        return F.leaky_relu(self.bn(self.conv(upsampled)), 0.2)


class NoiseDecoder(nn.Module):
    """Embedding `[B, embed_dim]` -> raw (unbounded) noise `[B, 3, image_size, image_size]`."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or DecoderConfig()
        width, side = self.config.channels, self.config.init_size
        self.fc = nn.Sequential(nn.Linear(self.config.embed_dim, width * side * side))
        blocks: list[nn.Module] = [ResBlock(width)]
        for _ in range(UPSAMPLINGS):
            blocks += [UpBlock(width, width // 2), ResBlock(width // 2)]
            width //= 2
        self.upsample_blocks = nn.ModuleList(blocks)
        self.final_conv = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"decoder expects embeddings [B, {self.config.embed_dim}], "
                f"got {tuple(embeddings.shape)}"
            )
        side = self.config.init_size
        out = self.fc(embeddings.float()).view(-1, self.config.channels, side, side)
        for block in self.upsample_blocks:
            out = block(out)
        return self.final_conv(out)


def check_eps(eps: float) -> None:
    if not 0 < eps <= 1:
        raise AttackConfigError(f"eps must be in (0, 1] (pixels are in [0, 1]), got {eps}")


def bound_noise(raw: torch.Tensor, eps: float, bound: str = "tanh") -> torch.Tensor:
    """Raw decoder output as noise within [-eps, eps].

    "tanh": `eps * tanh(raw)`, differentiable everywhere, so saturated outputs still learn
    (a straight-through clamp was tried first: its raw outputs grew without limit and the
    loss stalled). "clamp": the released decoders' hard clamp. Both hold the bound exactly.
    """
    if bound == "tanh":
        return eps * torch.tanh(raw)
    if bound == "clamp":
        return raw.clamp(-eps, eps)
    raise AttackConfigError(f"unknown noise bound {bound!r}; choose one of {', '.join(BOUNDS)}")


def add_noise(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The adversarial image: noise added to clean pixels, kept in [0, 1]."""
    return (clean + noise).clamp(0.0, 1.0)


class AnyAttack:
    """A decoder bound to its encoder victim and budget: targets in, noise and images out.

    The encoder embeds target images at its own resolution; the decoder's noise is at
    `decoder.config.image_size`, which is the size clean images must have.
    """

    def __init__(self, encoder: Victim, decoder: NoiseDecoder, *, eps: float = DEFAULT_EPS):
        check_eps(eps)
        check_compatible(encoder, decoder.config)
        self.encoder = encoder
        self.decoder = decoder
        self.eps = float(eps)

    def noise(self, targets: torch.Tensor) -> torch.Tensor:
        """Bounded noise for target images `[B,3,S,S]` at the encoder's size."""
        with torch.no_grad():
            embeddings = self.encoder.encode_image(targets)
        return bound_noise(self.decoder(embeddings), self.eps, self.decoder.config.bound)

    def apply(self, clean: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Adversarial images: each clean image carries the noise of its paired target."""
        if clean.shape[0] != targets.shape[0]:
            raise ValueError(f"{clean.shape[0]} clean images but {targets.shape[0]} targets")
        size = self.decoder.config.image_size
        if clean.shape[-2:] != (size, size):
            raise ValueError(
                f"clean images must be {size}x{size} (the decoder's size), got "
                f"{clean.shape[-2]}x{clean.shape[-1]}; resize with robust.data.images first"
            )
        with torch.no_grad():
            return add_noise(clean, self.noise(targets))

    def config(self) -> dict[str, Any]:
        return {
            "attack": "anyattack",
            "encoder": self.encoder.name,
            "eps": self.eps,
            "decoder": self.decoder.config.to_dict(),
        }


def embedding_width(encoder: Victim) -> int:
    """The width of an encoder's image embeddings, read off one blank image."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=encoder.device)
        return int(encoder.encode_image(probe).shape[1])


def decoder_config_for(
    encoder: Victim, *, channels: int = 256, image_size: int | None = None, bound: str = "tanh"
) -> DecoderConfig:
    """A decoder to train for an encoder: its embedding width, by default its resolution."""
    return DecoderConfig(
        embed_dim=embedding_width(encoder),
        image_size=encoder.image_size if image_size is None else image_size,
        channels=channels,
        bound=bound,
    )


def check_compatible(encoder: Victim, config: DecoderConfig) -> None:
    """One clear error when an encoder's embedding width is not the decoder's input width."""
    width = embedding_width(encoder)
    if width != config.embed_dim:
        raise AttackConfigError(
            f"encoder {encoder.name} gives {width}-d embeddings but the decoder takes "
            f"{config.embed_dim}-d; use the encoder the decoder was trained with"
        )


def expected_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer name of a decoder with this config, with its shape."""
    return {name: tuple(t.shape) for name, t in _meta_decoder(config).state_dict().items()}


def _meta_decoder(config: DecoderConfig) -> NoiseDecoder:
    with torch.device("meta"):
        return NoiseDecoder(config)


def infer_config(state: dict[str, torch.Tensor]) -> DecoderConfig:
    """Decoder sizes read off a state dict's shapes (released files carry no config)."""
    try:
        fc_weight = state["fc.0.weight"]
        conv_weight = state["upsample_blocks.0.conv1.weight"]
    except KeyError as missing:
        raise DecoderLoadError(
            f"not an AnyAttack decoder: parameter {missing.args[0]} is missing"
        ) from None
    if fc_weight.dim() != 2 or conv_weight.dim() != 4:
        raise DecoderLoadError(
            f"not an AnyAttack decoder: fc.0.weight is {tuple(fc_weight.shape)} and "
            f"upsample_blocks.0.conv1.weight {tuple(conv_weight.shape)} (expected 2-D and 4-D)"
        )
    channels = int(conv_weight.shape[0])
    side = math.isqrt(int(fc_weight.shape[0]) // max(channels, 1))
    if side * side * channels != fc_weight.shape[0]:
        raise DecoderLoadError(
            f"fc.0.weight has {fc_weight.shape[0]} outputs, not channels x side^2 for "
            f"{channels} channels; not an AnyAttack decoder"
        )
    return DecoderConfig(
        embed_dim=int(fc_weight.shape[1]),
        image_size=side * 2**UPSAMPLINGS,
        channels=channels,
        bound="clamp",
    )


def decoder_from_state(
    state: dict[str, torch.Tensor], config: DecoderConfig | None = None, *, source: str = "state"
) -> NoiseDecoder:
    """A decoder holding `state`; missing, unexpected or mis-shaped keys are one error."""
    state = {_strip_ddp(name): value for name, value in state.items()}
    config = config or infer_config(state)
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{name} {tuple(state[name].shape)} (expected {shape})"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    )
    problems = [
        f"{label}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if names
    ]
    if problems:
        raise DecoderLoadError(
            f"{source} does not match an AnyAttack decoder {config.to_dict()}: "
            + "; ".join(problems)
        )
    decoder = NoiseDecoder(config)
    decoder.load_state_dict(state)
    return decoder.eval()


def _strip_ddp(name: str) -> str:
    """Released checkpoints come from DistributedDataParallel: drop its `module.` prefix."""
    return name.removeprefix("module.")


def read_checkpoint(path: Path | str, *, trust_pickle: bool | None = None) -> dict[str, Any]:
    """A decoder checkpoint as a dict, read without executing pickled code unless trusted
    (`trust_pickle=None` reads $ROBUST_TRUST_PICKLE); every bad file is one error line."""
    path = Path(path)
    if not path.exists():
        raise DecoderLoadError(
            f"decoder file {path} does not exist; pass a checkpoint written by "
            "`robust anyattack pretrain|finetune` or a released AnyAttack .pt file"
        )
    if trust_pickle is None:
        trust_pickle = trust_pickle_from_env()
    try:
        payload = read_torch_file(path, trust_pickle=trust_pickle)
    except CheckpointError as error:
        raise DecoderLoadError(f"decoder file {error}") from None
    if not isinstance(payload, dict) or STATE_KEY not in payload:
        keys = ", ".join(sorted(map(str, payload)))[:200] if isinstance(payload, dict) else ""
        raise DecoderLoadError(
            f"{path} has no {STATE_KEY!r} entry (found: {keys or type(payload).__name__}); "
            "AnyAttack checkpoints keep the decoder under that key"
        )
    state = payload[STATE_KEY]
    if not isinstance(state, dict) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state.items()
    ):
        raise DecoderLoadError(
            f"{path}: {STATE_KEY!r} is not a state dict of named tensors; AnyAttack checkpoints "
            "keep the decoder's state_dict() under that key"
        )
    return payload


def load_decoder(path: Path | str) -> NoiseDecoder:
    """A decoder from a checkpoint of this project or a released AnyAttack file."""
    payload = read_checkpoint(path)
    saved = payload.get("decoder_config")
    config = None
    if isinstance(saved, dict):
        try:
            config = DecoderConfig(**saved)
        except (TypeError, RobustError) as error:  # unknown keys, values of the wrong kind
            raise DecoderLoadError(
                f"{path}: its decoder_config is not a decoder's sizes ({error}); delete that "
                "entry to read the sizes off the weights"
            ) from None
    return decoder_from_state(payload[STATE_KEY], config, source=str(path))


def save_decoder(decoder: NoiseDecoder, path: Path | str, **extra: Any) -> Path:
    """Write a decoder in the released layout plus its config (and any extra entries)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {STATE_KEY: decoder.state_dict(), "decoder_config": decoder.config.to_dict()}
    payload.update(extra)
    temporary = path.with_name(path.name + ".partial")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def describe_checkpoint(path: Path | str) -> dict[str, Any]:
    """What a decoder file holds: sizes, parameter count, and any training record."""
    payload = read_checkpoint(path)
    decoder = load_decoder(path)
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    return {
        "path": str(path),
        "decoder": decoder.config.to_dict(),
        "parameters": sum(p.numel() for p in decoder.parameters()),
        "stage": config.get("stage", "released (no training record)"),
        "encoder": config.get("encoder"),
        "eps": config.get("eps"),
        "step": payload.get("step"),
        "trained_steps": config.get("steps"),
    }


def parse_eps(text: str) -> float:
    """A budget written as a fraction of the pixel range, `16/255`, or a float, `0.0627`."""
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise AttackConfigError(
            f"eps {text!r} is not a number; write e.g. 16/255 or 0.0627"
        ) from None
    check_eps(value)
    return value


def strip_training_state(source: Path | str, destination: Path | str) -> Path:
    """A decoder-only copy of a checkpoint (no optimiser or schedule), for shipping.

    The training config and step stay, so the copy still says how it was made.
    """
    payload = read_checkpoint(source)
    decoder = load_decoder(source)
    kept = {key: payload[key] for key in ("config", "step") if key in payload}
    return save_decoder(decoder, destination, **kept)
