"""How a model is spread over the ranks of a torchrun job: DDP (a whole copy per rank) or FSDP2 (sharded).

``training.parallel: fsdp`` shards with PyTorch's own FSDP2 (``torch.distributed.fsdp.fully_shard``): one shard
unit per DiT block, one for the local denoiser, and the root (time MLP, heads, patch embedding, final layer).
Each rank keeps 1/N of the parameters, gradients and AdamW state; a unit's full parameters exist only while it
computes. The EMA is sharded the same way: an EMA shard is updated from the matching parameter shard (no
communication, and the same numbers as a whole EMA); validation and previews run it on every rank together, and
``prdit export`` gathers it into one file.

Mixed precision: with bf16 (``training.precision``, see :func:`prdit.runtime.resolve_precision`) the units
gather their parameters in bf16 (half the memory and traffic of the full copies) and reduce gradients in fp32;
their inputs are not cast (``cast_forward_inputs=False``), so timesteps, the residual stream and the local
denoiser's intensity skip stay fp32 under autocast as they do with DDP.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from prdit.models import PRDiT
from prdit.runtime import resolve_precision
from prdit.train.distributed import DistInfo
from prdit.train.ema import create_ema


def shard_units(model: PRDiT) -> list[nn.Module]:
    """The FSDP shard units below the root, in forward order: the local denoiser, then each DiT block."""
    blocks = list(model.dit.blocks) if model.depth else []
    return [model.local_denoiser, *blocks]


def broadcast_from_rank0(model: nn.Module) -> None:
    """Every rank takes rank 0's weights, as DDP does (the ranks seed their RNGs apart, so fresh
    initialisations differ)."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard_model(model: PRDiT, precision: str, device: torch.device) -> PRDiT:
    """Shard ``model`` in place over the default process group (FSDP2); returns it (now also an FSDPModule).

    Call :func:`broadcast_from_rank0` first: FSDP keeps each rank's own slice of the weights it is given."""
    # The local denoiser returns a view; PRDiT only adds to it out of place, which keeps FSDP's backward hook.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPLocalDenoiser\) returned a view tensor")
    bf16 = resolve_precision(precision, device) == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False)
    for unit in shard_units(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def wrap_model(model: PRDiT, parallel: str, precision: str, info: DistInfo
               ) -> tuple[nn.Module, DistributedDataParallel | None, nn.Module]:
    """What the loss calls, the DDP wrapper (if any) and the EMA, copied once every rank holds rank 0's weights.

    FSDP shards ``model`` and the EMA in place: call it before the optimiser is built (sharding replaces the
    parameters). A single process uses the model as it is."""
    if not info.enabled:
        return model, None, create_ema(model)
    if parallel == "fsdp":
        broadcast_from_rank0(model)
        ema = create_ema(model)
        shard_model(model, precision, info.device)
        shard_model(cast(PRDiT, ema), "fp32", info.device)  # a copy of the model; the average stays fp32
        return model, None, ema
    ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return ddp, ddp, create_ema(model)


@contextmanager
def gradient_sync(network: nn.Module, ddp: DistributedDataParallel | None, enabled: bool) -> Iterator[None]:
    """Inside, backward passes reduce gradients across ranks only when ``enabled`` (the last micro-batch of a
    step); before that they accumulate locally, as DDP's ``no_sync``."""
    if enabled or not (ddp is not None or isinstance(network, FSDPModule)):
        yield
        return
    if ddp is not None:
        with ddp.no_sync():
            yield
        return
    assert isinstance(network, FSDPModule)
    network.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        network.set_requires_gradient_sync(True)


def full_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a number: FSDP's is a DTensor whose value is the same on every rank."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)
