"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch


def create_ema(model: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """``decay``, or with warm-up ``min(decay, (1 + step) / (10 + step))`` so short runs are not stuck at init."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over trainable parameters (frozen ones are equal already)."""
    ema_params = dict(ema.named_parameters())
    trainable = [(ema_params[name], p) for name, p in model.named_parameters() if p.requires_grad]
    if trainable:
        ema_tensors, model_tensors = zip(*trainable)
        torch._foreach_lerp_(list(ema_tensors), [p.detach() for p in model_tensors], 1.0 - decay)
