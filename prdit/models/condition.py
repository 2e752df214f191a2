"""Conditions of a conditional PRDiT: one-hot label channels beside the noisy voxels, and scalar attributes.

The network sees a :class:`Condition`: ``labels`` [B, K, D, H, W] one-hot channels (all zero where a sample has
no label map) and ``attributes`` [B, A] normalised values with ``attribute_mask`` [B, A] (1 given, 0 not given).
An absent condition contributes exactly zero: the label projections have no bias and the attribute embeddings
are multiplied by their mask before a bias-free output layer, so a conditional network with its condition
dropped is its unconditional network, voxel for voxel. That is what condition dropout trains, and what
classifier-free guidance (:class:`GuidedModel`) uses as its unconditional pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from prdit.models.linear import Linear
from prdit.models.tokens import extract_tokens


@dataclass
class Condition:
    """A batch of conditions; either part may be None (not part of this model or not given)."""

    labels: torch.Tensor | None = None  # [B, K, D, H, W] one-hot float
    attributes: torch.Tensor | None = None  # [B, A] normalised
    attribute_mask: torch.Tensor | None = None  # [B, A] 1 given, 0 not given

    @staticmethod
    def from_label_map(label_map: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
        """An integer label map [B, 1, D, H, W] -> one-hot [B, K, D, H, W] of the label ``values`` (in order)."""
        table = torch.as_tensor(list(values), device=label_map.device).view(1, -1, 1, 1, 1)
        return (label_map.long() == table).float()

    @property
    def batch(self) -> int:
        present = self.labels if self.labels is not None else self.attributes
        return 0 if present is None else int(present.shape[0])

    def to(self, device: torch.device | str) -> Condition:
        return Condition(*(None if t is None else t.to(device) for t in (self.labels, self.attributes, self.attribute_mask)))

    def null(self) -> Condition:
        """The same batch with nothing given: the unconditional pass of classifier-free guidance."""
        return Condition(
            None if self.labels is None else torch.zeros_like(self.labels),
            None if self.attributes is None else torch.zeros_like(self.attributes),
            None if self.attribute_mask is None else torch.zeros_like(self.attribute_mask),
        )

    def dropped(self, probability: float, generator: torch.Generator | None = None) -> Condition:
        """Condition dropout for training: the whole condition of a sample is dropped with ``probability``, and
        each part (labels, attributes) on its own with ``probability`` too, so the model learns every combination
        (mask only, attributes only, neither) that sampling may ask for."""
        if probability <= 0 or self.batch == 0:
            return self
        device = (self.labels if self.labels is not None else self.attributes).device  # type: ignore[union-attr]
        draws = torch.rand((3, self.batch), generator=generator, device=generator.device if generator else device).to(device)
        keep_all = draws[0] >= probability
        labels, attributes, mask = self.labels, self.attributes, self.attribute_mask
        if labels is not None:
            labels = labels * (keep_all & (draws[1] >= probability)).view(-1, 1, 1, 1, 1).to(labels.dtype)
        if attributes is not None:
            given = mask if mask is not None else torch.ones_like(attributes)
            mask = given * (keep_all & (draws[2] >= probability)).view(-1, 1).to(given.dtype)
        return Condition(labels, attributes, mask)

    def repeat_with_null(self) -> Condition:
        """[condition; null condition]: both passes of classifier-free guidance in one batch."""
        def doubled(part: torch.Tensor | None) -> torch.Tensor | None:
            return None if part is None else torch.cat([part, torch.zeros_like(part)])

        return Condition(doubled(self.labels), doubled(self.attributes), doubled(self.attribute_mask))


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / (dim / 2)), as in DiT / guided-diffusion (the timestep
    embedding's features, and the attributes')."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ConditionEncoder(nn.Module):
    """One path's condition inputs: label tokens -> ``token_dim`` (added to the path's tokens) and attributes ->
    ``cond_dim`` (added to its adaLN condition). Every output layer starts at zero and has no bias."""

    # Normalised attributes (about -3..3) are spread over the sinusoid's periods like timesteps 0..1000.
    ATTRIBUTE_TIME_SCALE = 100.0

    def __init__(self, label_channels: int, attributes: int, patch_size: int, stride: int, token_dim: int,
                 cond_dim: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.patch_size, self.stride, self.frequency_size = patch_size, stride, frequency_size
        self.labels = Linear(label_channels * patch_size**3, token_dim, bias=False) if label_channels else None
        self.attributes = nn.ModuleList(
            nn.Sequential(Linear(frequency_size, cond_dim), nn.SiLU(), Linear(cond_dim, cond_dim)) for _ in range(attributes)
        )
        self.attribute_out = Linear(cond_dim, cond_dim, bias=False) if attributes else None
        for layer in (self.labels, self.attribute_out):
            if layer is not None:
                nn.init.zeros_(layer.weight)

    def label_tokens(self, condition: Condition) -> torch.Tensor | None:
        if self.labels is None or condition.labels is None:
            return None
        return self.labels(extract_tokens(condition.labels, self.patch_size, self.stride))

    def attribute_embedding(self, condition: Condition) -> torch.Tensor | None:
        if self.attribute_out is None or condition.attributes is None:
            return None
        values = condition.attributes.float()
        mask = condition.attribute_mask.float() if condition.attribute_mask is not None else torch.ones_like(values)
        total = sum(
            mask[:, i : i + 1] * embed(sinusoid(self.ATTRIBUTE_TIME_SCALE * values[:, i], self.frequency_size))
            for i, embed in enumerate(self.attributes)
        )
        return self.attribute_out(total)


def add(x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    return x if extra is None else x + extra.to(x.dtype)


class GuidedModel(nn.Module):
    """A conditional network under classifier-free guidance: ``out = uncond + w (cond - uncond)``.

    Called like an unconditional network, ``model(x, t)``, so every sampler takes it unchanged. The output is
    the network's (eps_hat and x0_hat, or a velocity); the combination is linear, so it is the same guidance on
    eps and on x0. ``w = 1`` is the conditional network alone, ``w = 0`` the unconditional one (one pass each);
    any other ``w`` evaluates both passes as one batch.
    """

    def __init__(self, model: nn.Module, condition: Condition, guidance_scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.condition = condition
        self.guidance_scale = float(guidance_scale)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        w = self.guidance_scale
        if w == 1.0:
            return self.model(x, t, condition=self.condition, **kwargs)
        if w == 0.0:
            return self.model(x, t, condition=self.condition.null(), **kwargs)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), condition=self.condition.repeat_with_null(), **kwargs)
        cond, uncond = both.chunk(2)
        return uncond + w * (cond - uncond)
