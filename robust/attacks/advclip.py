"""AdvCLIP: a universal, downstream-agnostic adversarial patch against an image encoder.

Zhou et al., ACM MM 2023. A generator turns one fixed noise vector into a patch; pasted on
unlabelled images, it must push each patched image's embedding away from its clean
embedding and its paired caption (adversarial InfoNCE, tau 0.1) and deform the
neighbourhood graph of the embeddings (topology deviation), while a discriminator and an
MSE term keep patched images close to natural ones. Generator loss:

    L_G = gan * BCE(D(x'), 1) + mse * MSE(x', x)
          - alpha * [NCE(f(x') -> f(x)) + beta * NCE(f(x') -> g(t))]
          - delta * [U_image + gamma * U_text]

with the paper's alpha, beta, gamma, delta = 10, 5, 5, 1. Departures from the reference
code (see the project's research notes), all deliberate:

- the patch is in [0, 1] pixel space with the full range (sigmoid output) and is pasted
  before each victim's normalisation, so it applies to any victim;
- every patch pixel depends on the generator (upsample + conv, no stride-8 grid);
- the topology term uses an explicit k-NN graph over a feature bank of clean embeddings
  of the fitting images (not one 16-image batch): U_image compares each image's fuzzy
  memberships to its k nearest bank images before and after patching; U_text compares the
  clean and patched image's memberships to the k nearest bank captions of its own caption;
- the discriminator is a plain DCGAN one (BCE on logits), without WGAN weight clipping;
- "random" placement trains with expectation over location and scale.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robust.attacks.base import AttackConfigError, UniversalAttack
from robust.attacks.patch_artifact import PatchArtifact, load_patch
from robust.attacks.patch_geometry import (
    apply_patch,
    check_area_fraction,
    check_placement,
    patch_side,
    sample_boxes,
)
from robust.attacks.registry import register_attack
from robust.data.dataset import CaptionDataset
from robust.data.world import ZOO_WORLD
from robust.errors import CapabilityError
from robust.progress import Progress, ensure_progress
from robust.seeding import global_generator_seeded
from robust.victims.base import Victim

_MEMBERSHIP_EPS = 1e-4
ARTIFACT_FILE = "patch.png"


@dataclass(frozen=True)
class AdvCLIPParams:
    """AdvCLIP's hyper-parameters; defaults follow the paper and its code where they exist."""

    area_fraction: float = 0.03
    placement: str = "fixed"
    scale_range: tuple[float, float] = (0.8, 1.2)
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    alpha: float = 10.0
    beta: float = 5.0
    gamma: float = 5.0
    delta: float = 1.0
    tau: float = 0.1
    gan_weight: float = 1.0
    mse_weight: float = 1.0
    knn_k: int = 10
    bank_size: int = 1024
    noise_dim: int = 100
    generator_width: int = 128
    discriminator_width: int = 32
    log_every: int = 10
    fit_dataset: str = f"{ZOO_WORLD}:train"
    fit_limit: int = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        object.__setattr__(self, "betas", tuple(float(v) for v in self.betas))
        check_placement(self.placement, self.scale_range)
        check_area_fraction(self.area_fraction)
        for name in (
            "steps",
            "batch_size",
            "knn_k",
            "bank_size",
            "noise_dim",
            "generator_width",
            "discriminator_width",
            "log_every",
            "fit_limit",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AttackConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise AttackConfigError("batch_size must be at least 2 (InfoNCE needs negatives)")
        for name in ("alpha", "beta", "gamma", "delta", "gan_weight", "mse_weight"):
            if getattr(self, name) < 0:
                raise AttackConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.tau <= 0 or self.lr <= 0:
            raise AttackConfigError(f"tau and lr must be positive, got {self.tau}, {self.lr}")


class PatchGenerator(nn.Module):
    """Fixed noise -> a `side x side` patch in [0, 1]: upsample + conv blocks, sigmoid out."""

    def __init__(self, side: int, noise: torch.Tensor, width: int) -> None:
        super().__init__()
        self.side = side
        self.register_buffer("noise", noise.reshape(1, -1))
        self.stem = nn.Linear(noise.numel(), width * 16)
        self.width = width
        blocks: list[nn.Module] = []
        resolution, channels = 4, width
        while resolution < side:
            out = max(channels // 2, 16)
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(channels, out, 3, padding=1),
                nn.LeakyReLU(0.2),
            ]
            resolution, channels = resolution * 2, out
        blocks.append(nn.Conv2d(channels, 3, 3, padding=1))
        self.body = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self) -> torch.Tensor:
        features = self.stem(self.noise).view(1, self.width, 4, 4)
        logits = F.interpolate(
            self.body(features), size=(self.side, self.side), mode="bilinear", antialias=True
        )
        return torch.sigmoid(logits)[0]


class PatchDiscriminator(nn.Module):
    """Clean vs patched images (DCGAN style): strided convs, pooled, one logit per image."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width * 2, 4, 2, 1),
            nn.BatchNorm2d(width * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, width * 4, 4, 2, 1),
            nn.BatchNorm2d(width * 4),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width * 4, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0).squeeze(-1)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of L2-normalised rows: query i's positive is key i, the others are negatives."""
    logits = queries @ keys.t() / tau
    return F.cross_entropy(logits, torch.arange(queries.shape[0], device=queries.device))


def knn_graph(
    anchors: torch.Tensor, bank: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices `[B, k]` of each anchor's k most similar bank rows (cosine).

    `exclude[b]` is a bank index anchor b may not pick (itself, when it is in the bank), or -1.
    """
    similarity = anchors @ bank.t()
    if exclude is not None:
        rows = (exclude >= 0).nonzero().flatten()
        similarity[rows, exclude[rows]] = -math.inf
    return similarity.topk(min(k, bank.shape[0] - 1), dim=1).indices


def topology_deviation(
    reference: torch.Tensor,
    adversarial: torch.Tensor,
    bank: torch.Tensor,
    neighbours: torch.Tensor,
) -> torch.Tensor:
    """How far the adversarial anchors' fuzzy k-NN memberships drift from the reference's.

    Memberships follow UMAP: exp(-(d - rho) / sigma) over each anchor's neighbour set, with
    rho (nearest distance) and sigma (mean excess distance) taken from the reference so
    both sides are measured on one scale. Returns the fuzzy-set cross entropy
    sum_j [mu log(mu/nu) + (1-mu) log((1-mu)/(1-nu))], averaged over anchors.
    """
    neighbour_rows = bank[neighbours]  # [B, k, D]
    reference_distance = 1.0 - (reference.unsqueeze(1) * neighbour_rows).sum(-1)
    adversarial_distance = 1.0 - (adversarial.unsqueeze(1) * neighbour_rows).sum(-1)
    rho = reference_distance.min(dim=1, keepdim=True).values
    sigma = (reference_distance - rho).mean(dim=1, keepdim=True).clamp_min(1e-6)
    low, high = _MEMBERSHIP_EPS, 1.0 - _MEMBERSHIP_EPS
    mu = torch.exp(-(reference_distance - rho).clamp_min(0) / sigma).clamp(low, high)
    nu = torch.exp(-(adversarial_distance - rho).clamp_min(0) / sigma).clamp(low, high)
    cross_entropy = mu * torch.log(mu / nu) + (1 - mu) * torch.log((1 - mu) / (1 - nu))
    return cross_entropy.sum(dim=1).mean()


@dataclass(frozen=True)
class FeatureBank:
    """Clean embeddings of the fitting images (and their mean caption), computed once."""

    images: torch.Tensor  # [N, D], every fitting image
    texts: torch.Tensor | None  # [N, D] or None without captions / text encoder
    bank_indices: torch.Tensor  # [M] rows of `images` that form the k-NN bank


@register_attack
class AdvCLIP(UniversalAttack):
    """The AdvCLIP universal patch, bound to a source victim's image (and text) encoder."""

    name: ClassVar[str] = "advclip"
    Params: ClassVar[type] = AdvCLIPParams

    def __init__(self, victim: Victim, *, seed: int = 0, **params: Any) -> None:
        super().__init__(victim, seed=seed, **params)
        self._params: AdvCLIPParams
        self.side = patch_side(victim.image_size, self._params.area_fraction)
        self.artifact: PatchArtifact | None = None

    # -- data ------------------------------------------------------------------------------

    def _check_image_encoder(self) -> None:
        size = self.victim.image_size
        try:
            with torch.no_grad():
                self.victim.encode_image(torch.zeros(1, 3, size, size, device=self.victim.device))
        except (CapabilityError, NotImplementedError):
            raise AttackConfigError(
                f"{self.victim.name} has no image encoder; fit the patch on a CLIP-style or "
                "fusion victim"
            ) from None

    def _load(self, dataset: CaptionDataset, indices: list[int]) -> torch.Tensor:
        from robust.data.images import load_images

        victim = self.victim
        images = load_images(dataset.images, indices, victim.image_size, victim.resize_mode)
        return images.to(victim.device)

    def _feature_bank(
        self, dataset: CaptionDataset, generator: torch.Generator, progress: Progress
    ) -> FeatureBank:
        params, victim = self._params, self.victim
        chunks, texts = [], []
        use_text = "itc" in victim.capabilities and dataset.num_captions > 0
        with torch.no_grad(), progress.task("patch: feature bank", dataset.num_images) as task:
            for start in range(0, dataset.num_images, 128):
                indices = list(range(start, min(start + 128, dataset.num_images)))
                chunks.append(victim.encode_image(self._load(dataset, indices)))
                if use_text:
                    for group in dataset.captions_of(indices):
                        texts.append(F.normalize(victim.encode_text(group).mean(0), dim=-1))
                task.advance(len(indices))
        count = min(params.bank_size, dataset.num_images)
        bank_indices = torch.randperm(dataset.num_images, generator=generator)[:count]
        return FeatureBank(
            images=torch.cat(chunks),
            texts=torch.stack(texts) if use_text else None,
            bank_indices=bank_indices.to(victim.device),
        )

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, dataset: CaptionDataset, progress: Progress | None = None) -> PatchArtifact:
        """Train the patch on `dataset`'s images (and captions); returns and keeps the artifact."""
        params, victim = self._params, self.victim
        if dataset.num_images < 2:
            raise AttackConfigError("fitting a patch needs at least 2 images")
        self._check_image_encoder()
        progress = ensure_progress(progress)
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(params.noise_dim, generator=generator)
        with global_generator_seeded(self.seed):  # module initialisation reads only the global one
            patch_generator = PatchGenerator(self.side, noise, params.generator_width)
            discriminator = PatchDiscriminator(params.discriminator_width)
        patch_generator.to(victim.device).train()
        discriminator.to(victim.device).train()
        optimiser_g = torch.optim.Adam(
            patch_generator.parameters(), lr=params.lr, betas=params.betas
        )
        optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=params.lr, betas=params.betas)
        bank = self._feature_bank(dataset, generator, progress)
        bank_position = torch.full((dataset.num_images,), -1, dtype=torch.long)
        bank_position[bank.bank_indices.cpu()] = torch.arange(bank.bank_indices.numel())
        bank_images = bank.images[bank.bank_indices]
        bank_texts = None if bank.texts is None else bank.texts[bank.bank_indices]

        batch_size = min(params.batch_size, dataset.num_images)
        order = torch.randperm(dataset.num_images, generator=generator)
        cursor = 0
        curve: list[dict[str, float]] = []
        with progress.task(f"patch: fitting on {victim.name}", params.steps) as task:
            for step in range(1, params.steps + 1):
                if cursor + batch_size > dataset.num_images:
                    order = torch.randperm(dataset.num_images, generator=generator)
                    cursor = 0
                batch = order[cursor : cursor + batch_size]
                cursor += batch_size
                images = self._load(dataset, batch.tolist())
                boxes = sample_boxes(
                    batch_size,
                    victim.image_size,
                    self.side,
                    params.placement,
                    generator,
                    params.scale_range,
                )
                patched = apply_patch(images, patch_generator(), boxes)

                ones = torch.ones(batch_size, device=victim.device)
                loss_d = F.binary_cross_entropy_with_logits(
                    discriminator(images), ones
                ) + F.binary_cross_entropy_with_logits(discriminator(patched.detach()), ones * 0)
                optimiser_d.zero_grad(set_to_none=True)
                loss_d.backward()
                optimiser_d.step()

                terms = self._generator_terms(
                    images,
                    patched,
                    bank.images[batch.to(victim.device)],
                    None if bank.texts is None else bank.texts[batch.to(victim.device)],
                    bank_images,
                    bank_texts,
                    bank_position[batch].to(victim.device),
                )
                gan = F.binary_cross_entropy_with_logits(discriminator(patched), ones)
                loss_g = params.gan_weight * gan + terms.pop("loss")
                optimiser_g.zero_grad(set_to_none=True)
                loss_g.backward()
                optimiser_g.step()
                if step % params.log_every == 0 or step == params.steps:
                    curve.append(
                        {
                            "step": step,
                            "loss_d": float(loss_d.detach()),
                            "loss_g": float(loss_g.detach()),
                            "gan": float(gan.detach()),
                            **{key: float(value) for key, value in terms.items()},
                        }
                    )
                task.advance()
        with torch.no_grad():
            patch = patch_generator().cpu()
        self.artifact = PatchArtifact(
            patch=patch,
            source=victim.name,
            source_image_size=victim.image_size,
            area_fraction=params.area_fraction,
            placement=params.placement,
            seed=self.seed,
            config={**self.config(), "fit_images": dataset.name},
            curve=curve,
        )
        return self.artifact

    def _generator_terms(
        self,
        images: torch.Tensor,
        patched: torch.Tensor,
        clean_embeddings: torch.Tensor,
        text_embeddings: torch.Tensor | None,
        bank_images: torch.Tensor,
        bank_texts: torch.Tensor | None,
        self_in_bank: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The adversarial, topology and MSE terms (and their sum as "loss")."""
        params = self._params
        adversarial = self.victim.encode_image(patched)
        nce_image = info_nce(adversarial, clean_embeddings, params.tau)
        image_neighbours = knn_graph(clean_embeddings, bank_images, params.knn_k, self_in_bank)
        topo_image = topology_deviation(
            clean_embeddings, adversarial, bank_images, image_neighbours
        )
        zero = adversarial.new_zeros(())
        nce_text, topo_text = zero, zero
        if text_embeddings is not None and bank_texts is not None:
            nce_text = info_nce(adversarial, text_embeddings, params.tau)
            text_neighbours = knn_graph(text_embeddings, bank_texts, params.knn_k, self_in_bank)
            topo_text = topology_deviation(
                clean_embeddings, adversarial, bank_texts, text_neighbours
            )
        mse = F.mse_loss(patched, images)
        loss = (
            params.mse_weight * mse
            - params.alpha * (nce_image + params.beta * nce_text)
            - params.delta * (topo_image + params.gamma * topo_text)
        )
        cosine = (adversarial * clean_embeddings).sum(-1).mean()
        return {
            "loss": loss,
            "nce_image": nce_image.detach(),
            "nce_text": nce_text.detach(),
            "topo_image": topo_image.detach(),
            "topo_text": topo_text.detach(),
            "mse": mse.detach(),
            "cosine_to_clean": cosine.detach(),
        }

    # -- applying --------------------------------------------------------------------------

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Patched images with the fitted patch (call `fit` first, or set `artifact`)."""
        if self.artifact is None:
            raise AttackConfigError("the patch is not fitted yet; call fit() or load a patch file")
        return self.artifact.apply(images, self.generator(generator))

    # -- the artifact ------------------------------------------------------------------------

    def fit_data(self) -> CaptionDataset:
        """The dataset named by `fit_dataset` / `fit_limit` (world train by default)."""
        from robust.data import load_dataset

        return load_dataset(self._params.fit_dataset, limit=self._params.fit_limit)

    def save_artifact(self, folder: Path) -> Path:
        """Save the fitted patch as `folder/patch.png` + sidecar."""
        if self.artifact is None:
            raise AttackConfigError("the patch is not fitted yet; call fit() first")
        return self.artifact.save(Path(folder) / ARTIFACT_FILE)

    def load_artifact(self, folder: Path) -> bool:
        """Load `folder/patch.png` if present and fitted with this exact config."""
        path = Path(folder) / ARTIFACT_FILE
        if not path.is_file():
            return False
        artifact = load_patch(path)
        stored = {key: value for key, value in artifact.config.items() if key != "fit_images"}
        if stored != json.loads(json.dumps(self.config())):
            return False
        self.artifact = artifact
        return True

    def config(self) -> dict[str, Any]:
        """The common attack config plus the patch side in source pixels."""
        return {**super().config(), "side": self.side}
