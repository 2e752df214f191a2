"""PRDiT: a per-token local MLP denoiser (coarse) plus a global residual DiT (fine) over the same tokens.

    x [B, C, D, H, W] --reflect pad + P^3 windows, stride S--> tokens [B, L, C P^3]
    t --sinusoid(256) -> Linear -> SiLU--> shared
        coarse head  Linear(H, C P^3)  -> local denoiser  -> coarse tokens [B, L, S^3 * out * C]
        fine head    Linear(H, H)      -> global DiT      -> fine tokens   (depth > 0 only)
    output = tile(coarse + fine) [B, out * C, D, H, W], channels [eps_hat (C), x0_hat (C)]

Stage 1 trains the local denoiser alone (depth 0). Stage 2 adds the DiT, loads the stage-1 weights and
freezes them; the DiT's zero-initialised output layer makes the fresh stage-2 model equal to stage 1.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn

from prdit.errors import CheckpointError, ConfigError
from prdit.models.condition import Condition, ConditionEncoder, add, sinusoid
from prdit.models.global_dit import GlobalDiT
from prdit.models.linear import Linear
from prdit.models.local_denoiser import LocalDenoiser
from prdit.models.tokens import extract_tokens, tile_tokens, token_grid

LOCAL_MODULE_NAMES = ("time_embed", "coarse_head", "local_denoiser")
STAGE1_PREFIXES = tuple(f"{name}." for name in LOCAL_MODULE_NAMES)


class TimestepEmbedder(nn.Module):
    """t [B] -> 256-d sinusoid (max period 10000) -> Linear(256, H) -> SiLU; shared by both stages."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.linear = Linear(frequency_size, hidden_size)
        self.act = nn.SiLU()

    sinusoid = staticmethod(sinusoid)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(self.sinusoid(t, self.frequency_size)))


class PRDiT(nn.Module):
    """Pixel-level residual diffusion transformer; build it by name with :func:`prdit.models.create_model`.

    ``model(x, t)`` maps a volume [B, C, D, H, W] (each of D, H, W a multiple of the stride) and timesteps
    t [B] (or a scalar) in 0..1000 to [B, out_channels * C, D, H, W] in the dtype of ``x``, channels ordered
    [eps_hat, x0_hat] (one velocity head when ``out_channels == 1``). ``return_parts=True`` gives
    ``(coarse, fine)`` with ``coarse + fine`` the output; ``fine`` is all zeros for depth 0.
    """

    local_module_names = LOCAL_MODULE_NAMES

    def __init__(
        self,
        input_size: int | Sequence[int],
        patch_size: int = 12,
        stride: int = 8,
        depth: int = 0,
        hidden_size: int = 768,
        num_heads: int = 12,
        in_channels: int = 1,
        out_channels: int = 2,
        grad_checkpoint: bool = False,
        name: str | None = None,
        init_gain: float = 0.1,
        label_channels: int = 0,
        attributes: int = 0,
    ) -> None:
        super().__init__()
        if depth < 0 or in_channels < 1 or out_channels < 1 or label_channels < 0 or attributes < 0:
            raise ConfigError(
                f"model depth {depth}, in_channels {in_channels}, out_channels {out_channels}: "
                f"depth must be >= 0 and channel counts >= 1"
            )
        shape = (input_size,) * 3 if isinstance(input_size, int) else tuple(input_size)
        grid = token_grid(shape, patch_size, stride)
        self.name = name or f"PRDiT-H{hidden_size}/{patch_size}/{depth}"
        self.input_size = input_size
        self.patch_size = patch_size
        self.stride = stride
        self.depth = depth
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.token_dim = in_channels * patch_size**3
        self.label_channels = label_channels
        self.attributes = attributes
        out_dim = out_channels * in_channels * stride**3

        self.time_embed = TimestepEmbedder(hidden_size)
        self.coarse_head = Linear(hidden_size, self.token_dim)
        self.local_denoiser = LocalDenoiser(self.token_dim, out_dim, grad_checkpoint)
        if depth:
            self.fine_head = Linear(hidden_size, hidden_size)
            self.dit = GlobalDiT(
                self.token_dim, hidden_size, num_heads, depth, out_dim, grid, grad_checkpoint, init_gain=init_gain
            )
        for layer in self._time_layers():
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        # Condition inputs (created after every unconditional weight, so the random initialisation of those is
        # the same with and without them); each path has its own, starting at zero.
        if self.conditional:
            self.local_condition = ConditionEncoder(label_channels, attributes, patch_size, stride, self.token_dim, self.token_dim)
            if depth:
                self.dit_condition = ConditionEncoder(label_channels, attributes, patch_size, stride, hidden_size, hidden_size)
        self._local_frozen = False

    @property
    def conditional(self) -> bool:
        return bool(self.label_channels or self.attributes)

    def _time_layers(self) -> list[nn.Linear]:
        layers: list[nn.Linear] = [self.time_embed.linear, self.coarse_head]
        return layers + ([self.fine_head] if self.depth else [])

    @property
    def local_denoiser_frozen(self) -> bool:
        return self._local_frozen

    def freeze_local_denoiser(self) -> None:
        """Stage 2: freeze the local denoiser, the shared time MLP and the coarse head (run under no_grad)."""
        if not self.depth:
            raise ConfigError(f"{self.name} has depth 0: freezing its local denoiser would leave nothing to train")
        for module in (self.time_embed, self.coarse_head, self.local_denoiser, getattr(self, "local_condition", None)):
            if module is not None:
                module.requires_grad_(False)
        self._local_frozen = True

    def load_stage1_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the stage-1 part (time MLP, coarse head, local denoiser) of a checkpoint; DiT weights stay."""
        stage1 = {k: v for k, v in state_dict.items() if k.startswith(STAGE1_PREFIXES)}
        missing = sorted(k for k in self.state_dict() if k.startswith(STAGE1_PREFIXES) and k not in stage1)
        if missing:
            raise CheckpointError(
                f"the stage-1 weights miss {len(missing)} tensors of {self.name} (first: {missing[0]}); "
                f"is it a PRDiT checkpoint of the same size and patch?"
            )
        try:
            self.load_state_dict(stage1, strict=False)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[-1].strip()
            raise CheckpointError(f"stage-1 weights do not fit {self.name}: {first_line}") from None

    def _check_condition(self, condition: Condition, x: torch.Tensor) -> None:
        labels, attributes = condition.labels, condition.attributes
        if labels is not None and (labels.shape[:2] != (x.shape[0], self.label_channels) or labels.shape[2:] != x.shape[2:]):
            raise ValueError(f"expected condition labels of shape [{x.shape[0]}, {self.label_channels}, *{tuple(x.shape[2:])}], got {tuple(labels.shape)}")
        if attributes is not None and attributes.shape != (x.shape[0], self.attributes):
            raise ValueError(f"expected condition attributes of shape [{x.shape[0]}, {self.attributes}], got {tuple(attributes.shape)}")

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, return_parts: bool = False, condition: Condition | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape [B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape [{x.shape[0]}] (or a scalar), got {tuple(t.shape)}")
        grid = token_grid(x.shape[2:], self.patch_size, self.stride)
        tokens = extract_tokens(x, self.patch_size, self.stride)

        if condition is not None and not self.conditional:
            raise ValueError(f"{self.name} is unconditional: it takes no condition")
        if condition is not None:
            self._check_condition(condition, x)

        with torch.no_grad() if self._local_frozen else contextlib.nullcontext():
            shared = self.time_embed(t)
            if condition is None:
                coarse = self.local_denoiser(tokens, self.coarse_head(shared))
            else:
                local = self.local_condition
                coarse = self.local_denoiser(add(tokens, local.label_tokens(condition)),
                                             add(self.coarse_head(shared), local.attribute_embedding(condition)))
        if not self.depth:
            fine = None
        elif condition is None:
            fine = self.dit(tokens, self.fine_head(shared), grid)
        else:
            dit = self.dit_condition
            fine = self.dit(tokens, add(self.fine_head(shared), dit.attribute_embedding(condition)), grid, dit.label_tokens(condition))

        def to_volume(parts: torch.Tensor) -> torch.Tensor:
            return tile_tokens(parts, grid, self.stride).to(x.dtype)

        if return_parts:
            return to_volume(coarse), to_volume(fine if fine is not None else torch.zeros_like(coarse))
        return to_volume(coarse if fine is None else coarse + fine)

    def extra_repr(self) -> str:
        return (
            f"name={self.name}, input_size={self.input_size}, patch_size={self.patch_size}, stride={self.stride}, "
            f"tokens={self.token_dim}-d, out={self.out_channels}x{self.in_channels} channels"
            + (f", condition: {self.label_channels} label channels, {self.attributes} attributes" if self.conditional else "")
        )
