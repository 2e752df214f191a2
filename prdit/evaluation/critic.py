"""Wasserstein distance estimated by a WGAN-GP critic (Gulrajani et al. 2017) trained on real vs generated volumes.

A 3D convolutional critic f is trained to maximise ``E f(real) - E f(fake)`` under a gradient penalty
``lambda (|grad f(x_hat)| - 1)^2`` on random interpolates (lambda 10, Adam lr 1e-4, betas (0, 0.9)); the
Wasserstein-1 estimate is ``mean f(real) - mean f(fake)`` on a held-out validation split. Comparing two generators
is fair only under the identical budget (same seed, steps, batch size, split sizes), which the command enforces.
Training is resumable: batches and interpolation weights are drawn from generators seeded by (seed, step), so a
resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from prdit.errors import CheckpointError, DataError
from prdit.io import atomic_write


@dataclass(frozen=True)
class CriticConfig:
    """Everything that defines a critic run (a resumed run must match it)."""

    image_size: int
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9
    gp_lambda: float = 10.0
    width: int = 16
    seed: int = 0


class Critic3D(nn.Module):
    """Strided 4^3 convolutions with LeakyReLU down to 4^3, then a linear layer to one score per volume.

    No batch normalisation: the gradient penalty is defined per sample, which batch statistics would couple.
    """

    def __init__(self, image_size: int, width: int = 16, max_width: int = 256):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"critic image size must be a power of two >= 8, got {image_size}")
        layers: list[nn.Module] = []
        channels, size = 1, image_size
        while size > 4:
            out = min(width * 2 ** (len(layers) // 2), max_width)
            layers += [nn.Conv3d(channels, out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, size = out, size // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels * 4**3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``mean (|grad f(x_hat)|_2 - 1)^2`` at ``x_hat = eps real + (1 - eps) fake``, eps ~ U(0, 1) per sample."""
    eps = torch.rand(real.shape[0], 1, 1, 1, 1, generator=generator).to(real.device)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def split_indices(n: int, train_size: int | None, val_size: int | None, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint train/validation indices; defaults: 20 % (at least 1) validation, the rest training."""
    val_size = max(1, n // 5) if val_size is None else val_size
    train_size = n - val_size if train_size is None else train_size
    if train_size < 1 or val_size < 1 or train_size + val_size > n:
        raise DataError(f"{name}: {n} volume(s) cannot give --train_size {train_size} + --val_size {val_size} (both >= 1)")
    order = np.random.default_rng(seed).permutation(n)
    return order[:train_size], order[train_size : train_size + val_size]


def _save(path: Path, critic: nn.Module, optimizer: torch.optim.Optimizer, step: int, config: CriticConfig, meta: dict) -> None:
    with atomic_write(path) as handle:
        torch.save({"critic": critic.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "config": asdict(config), "meta": meta}, handle)


def load_checkpoint(path: Path, config: CriticConfig | None = None) -> dict:
    """Read a critic checkpoint (``weights_only``); if ``config`` is given it must match the stored one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the critic checkpoint ({type(error).__name__}: {error})") from None
    if config is not None and state.get("config") != asdict(config):
        raise CheckpointError(f"{path}: trained with {state.get('config')}, not {asdict(config)}; use another --save_path to start over")
    return state


def train_critic(
    real: np.ndarray,
    fake: np.ndarray,
    config: CriticConfig,
    checkpoint: Path | None = None,
    device: str | torch.device = "cpu",
    checkpoint_every: int = 200,
    progress: bool = True,
    desc: str = "critic",
    meta: dict | None = None,
) -> Critic3D:
    """Train a critic on model-space volumes ``real`` vs ``fake`` ([N, S, S, S]); resume from ``checkpoint`` if it exists."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(config.seed)
        critic = Critic3D(config.image_size, config.width).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, config)
        critic.load_state_dict(state["critic"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    real_t = torch.as_tensor(real, dtype=torch.float32).unsqueeze(1)
    fake_t = torch.as_tensor(fake, dtype=torch.float32).unsqueeze(1)
    bar = tqdm(range(start, config.steps), desc=desc, initial=start, total=config.steps, disable=not progress)
    for step in bar:
        rng = np.random.default_rng((config.seed, step))
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        real_batch = real_t[rng.integers(0, len(real_t), config.batch_size)].to(device)
        fake_batch = fake_t[rng.integers(0, len(fake_t), config.batch_size)].to(device)
        gap = critic(real_batch).mean() - critic(fake_batch).mean()
        penalty = gradient_penalty(critic, real_batch, fake_batch, generator)
        loss = -gap + config.gp_lambda * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            bar.set_postfix(w=f"{gap.item():.4f}", gp=f"{penalty.item():.3f}")
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == config.steps):
            _save(checkpoint, critic, optimizer, step + 1, config, meta or {})
    return critic.eval()


@torch.no_grad()
def wasserstein_estimate(critic: nn.Module, real: np.ndarray, fake: np.ndarray, batch_size: int = 8, device: str | torch.device = "cpu") -> float:
    """``mean f(real) - mean f(fake)`` over all of ``real`` and ``fake`` (model space, [N, S, S, S])."""

    def mean_score(volumes: np.ndarray) -> float:
        scores = [critic(torch.as_tensor(volumes[i : i + batch_size], dtype=torch.float32, device=device).unsqueeze(1)).double().sum().item()
                  for i in range(0, len(volumes), batch_size)]
        return math.fsum(scores) / len(volumes)

    critic.eval()
    return mean_score(real) - mean_score(fake)


def load_critic(path: Path, device: str | torch.device = "cpu") -> tuple[Critic3D, dict]:
    """A trained critic and its checkpoint (config, step, meta); an unfinished run is an error."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no critic checkpoint; train first (the same command without --eval)")
    state = load_checkpoint(path)
    config = CriticConfig(**state["config"])
    if state["step"] < config.steps:
        raise CheckpointError(f"{path}: training stopped at step {state['step']} of {config.steps}; rerun the training command to resume")
    critic = Critic3D(config.image_size, config.width)
    critic.load_state_dict(state["critic"])
    return critic.to(device).eval(), state
