"""A memory model of one training step: the peak memory per rank of a PRDiT run before it is launched.

    bytes per rank = weights + EMA + AdamW state                (sharded 1/N under FSDP)
                   + DDP's gradient buckets or FSDP's gathered shard units + bf16 weight copies (autocast)
                   + max(activations, gradients)

The last term is the backward pass: it starts with every activation saved by the forward pass (and the loss's
volumes) and no gradient, frees the activations block by block while the gradients appear, and ends with all
gradients (sharded 1/N under FSDP) beside the first block's activations (recomputed, with checkpointing) and
their gradients; the optimiser step then reads the gradients.

Parameter counts are exact (the model is built on the meta device). Activations are the bytes the layers save for
the backward pass per token (``DIT_BLOCK_BYTES`` etc. below, counted on real forward passes), and the whole is
checked against measured CPU peaks in ``benchmarks/bench_plan.py``. On a GPU add the CUDA context and the
allocator's slack (``GPU_RESERVE_BYTES``). Attention is counted as SDPA's fused kernels keep it (no score matrix);
on a CPU in bf16 a short sequence's explicit attention also holds its scores, at most 32 MiB per block
(``prdit.models.global_dit.EXPLICIT_ATTENTION_SCORES``), which the plan leaves out.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

from prdit.errors import ConfigError
from prdit.models import create_model
from prdit.models.local_denoiser import CHECKPOINT_CHUNKS

GIB = 2**30
GPU_RESERVE_BYTES = 1.5 * GIB  # CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation, per GPU
# Bytes saved for the backward pass per token, counted with torch.autograd.graph.saved_tensors_hooks over the
# unique storages of real forward passes, weights excluded (PRDiT-S/12/4, S/12/2, S/12/1 and S/12/0 at 64^3, torch
# 2.13). Under bf16 the saved matmul inputs and outputs are bf16, the norms' fp32.
DIT_BLOCK_BYTES = {"fp32": 80, "bf16": 57}  # per token and unit of the DiT width H (20 fp32 values)
PATCH_FINAL_VALUES = 11  # fp32 values per token and unit of H: patch embedding (4H MLP) and final layer
# Per token and raw token value D = C P^3, when it trains; checkpointed, its forward keeps only the tokens (1 value).
LOCAL_DENOISER_VALUES = {"fp32": 15.3, "bf16": 8.0}
# Gradients alive during the backward pass (of one block's activations, and of the output volumes as it starts):
# the one coefficient fitted to a measured peak (PRDiT-S/12/4, 64^3, batch 2; the other configurations of
# benchmarks/bench_plan.py check it).
BACKWARD_VALUES = 16  # fp32 values per token and unit of H
# The same for stage 1, per token and raw token value D, fitted to PRDiT-B/12/0 at 128^3, batch 1 (4096 tokens,
# where its activations outweigh its gradients; the other stage-1 configurations check it).
LOCAL_BACKWARD_VALUES = 6
VOLUME_VALUES = 12  # fp32 values per voxel and sample: the clean volume, noise, x_t, both heads, targets, loss terms


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted peak memory of one training step on one rank, in bytes, by part."""

    model: str
    size: int
    batch: int  # per GPU (per forward)
    gpus: int
    parallel: str  # ddp or fsdp
    checkpointing: bool
    precision: str  # fp32 or bf16
    tokens: int
    parameters: int
    trainable: int
    weights: float
    ema: float
    gradients: float
    optimizer: float
    communication: float  # DDP gradient buckets, or FSDP's gathered shard units
    weight_copies: float  # bf16 copies of the weights made by autocast
    activations: float
    backward_tail: float  # what is alive with the last gradients: the first block's activations and gradients

    @property
    def states(self) -> float:
        """What stays whatever the batch: weights, EMA, AdamW state, communication buffers, weight copies."""
        return self.weights + self.ema + self.optimizer + self.communication + self.weight_copies

    @property
    def step_growth(self) -> float:
        """What a training step adds on top of :attr:`states` at its peak."""
        return max(self.activations, self.gradients + self.backward_tail)

    @property
    def total(self) -> float:
        return self.states + self.step_growth

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class Architecture:
    """What the memory model needs of a model: parameter counts and the shapes that size its activations."""

    parameters: int
    trainable: int  # stage 2 trains with its local denoiser, time MLP and coarse head frozen
    units: tuple[int, ...]  # FSDP shard units: local denoiser, each DiT block, the root
    token_dim: int  # raw token values D = C P^3
    hidden: int
    depth: int
    stride: int
    out_values: int  # values each token writes: heads x channels x S^3
    largest_weight: int  # the largest trained weight matrix: its gradient is computed beside the finished ones


@functools.cache
def architecture(model: str, size: int, stride: int | None = None) -> Architecture:
    """The :class:`Architecture` of a registry model, built on the meta device: exact and instant."""
    with torch.device("meta"):
        network = create_model(model, input_size=size, stride=stride)
    total = sum(p.numel() for p in network.parameters())
    frozen = sum(p.numel() for name in network.local_module_names for p in getattr(network, name).parameters())
    units = [sum(p.numel() for p in network.local_denoiser.parameters())]
    if network.depth:
        units += [sum(p.numel() for p in block.parameters()) for block in network.dit.blocks]
    units.append(total - sum(units))
    local = {id(p) for name in network.local_module_names for p in getattr(network, name).parameters()} if network.depth else set()
    largest = max(p.numel() for p in network.parameters() if p.dim() > 1 and id(p) not in local)
    return Architecture(total, total - frozen if network.depth else total, tuple(units), network.token_dim,
                        network.hidden_size, network.depth, network.stride,
                        network.out_channels * network.in_channels * network.stride**3, largest)


def plan_memory(model: str, size: int, batch: int, gpus: int = 1, parallel: str = "ddp", checkpointing: bool = False,
                precision: str = "bf16", stride: int | None = None) -> MemoryPlan:
    """The :class:`MemoryPlan` of training ``model`` on ``size``^3 volumes, ``batch`` volumes per GPU per forward."""
    if parallel not in ("ddp", "fsdp") or precision not in ("fp32", "bf16"):
        raise ConfigError(f"parallel {parallel!r} / precision {precision!r}: use ddp or fsdp, and fp32 or bf16")
    if batch < 1 or gpus < 1:
        raise ConfigError(f"batch {batch} and gpus {gpus} must be at least 1")
    arch = architecture(model, size, stride)
    total, trainable, token_dim, units = arch.parameters, arch.trainable, arch.token_dim, arch.units
    tokens = (size // arch.stride) ** 3
    hidden, depth, out_values = arch.hidden, arch.depth, arch.out_values
    bf16 = precision == "bf16"
    shards = gpus if parallel == "fsdp" else 1

    weights, ema = 4 * total / shards, 4 * total / shards
    gradients, optimizer = 4 * trainable / shards, 8 * trainable / shards
    if parallel == "fsdp" and gpus > 1:  # two units gathered at once (one prefetched) and one unit's full gradients
        communication = float((2 if bf16 else 4) * 2 * max(units) + 4 * max(units))
    else:
        communication = 4 * trainable if gpus > 1 else 0.0  # DDP's buckets hold a second copy of the gradients
    weight_copies = 2.0 * total if bf16 else 0.0

    block = float(DIT_BLOCK_BYTES[precision] * hidden)
    per_token = 4.0 * out_values  # the tokens' output blocks
    if depth:
        kept = 4 * hidden if checkpointing else block  # checkpointed: only each block's input
        recomputed = block if checkpointing else 0.0  # one block rebuilt at a time in the backward pass
        rest = hidden * (4 * PATCH_FINAL_VALUES * (0.6 if bf16 else 1.0) + 4 * BACKWARD_VALUES)
        per_token += depth * kept + recomputed + rest
        tail = batch * tokens * (block + rest) + 4 * arch.largest_weight
    else:  # stage 1: the local denoiser trains (stage 2 runs it frozen, under no_grad, and keeps nothing)
        saved = 4 * LOCAL_DENOISER_VALUES[precision] * token_dim
        # checkpointed: the forward keeps only the tokens, and the backward rebuilds one token group at a time
        kept = 4 * token_dim if checkpointing else saved
        recomputed = saved / CHECKPOINT_CHUNKS if checkpointing else 0.0
        per_token += kept + recomputed + 4 * LOCAL_BACKWARD_VALUES * token_dim
        tail = batch * tokens * recomputed + 4 * arch.largest_weight  # and the last weight gradient's
    activations = batch * (tokens * per_token + 4 * VOLUME_VALUES * size**3)
    return MemoryPlan(model, size, batch, gpus, parallel, checkpointing, precision, tokens, total, trainable, weights,
                      ema, gradients, optimizer, communication, weight_copies, activations, tail)


def largest_batch(model: str, size: int, gpus: int, parallel: str, checkpointing: bool, precision: str,
                  memory_bytes: float, stride: int | None = None) -> int:
    """The largest per-GPU batch whose planned peak (plus ``GPU_RESERVE_BYTES``) fits in ``memory_bytes``; 0: none."""
    one = plan_memory(model, size, 1, gpus, parallel, checkpointing, precision, stride)
    room = memory_bytes - GPU_RESERVE_BYTES - one.states
    if room < one.step_growth:
        return 0
    batch = 1  # the step's growth is linear in the batch but for the gradients: search upwards
    while plan_memory(model, size, batch + 1, gpus, parallel, checkpointing, precision, stride).step_growth <= room:
        batch += 1
    return batch
