"""State dicts of the paper's official code (github Fredy-Zhang/PRDiT) -> prdit's, and whole official checkpoints.

The networks are the same; only names and two layouts differ:

* the official SwiGLU keeps its two input matrices apart (``fc1_g`` gate, ``fc1_x`` value); prdit fuses them
  into one ``w12`` with the gate rows first;
* an official output token is laid out ``[S, S, S, C]`` (channel last), prdit's ``[C, S, S, S]``, so the rows
  of both output layers (local ``linear_final``, DiT ``final_layer.linear``) are permuted;
* module names: ``t_embedder.mlp.0`` / ``coarse_head`` / ``fine_head`` are prdit's ``time_embed.linear`` /
  ``coarse_head`` / ``fine_head``, ``coarse.mlp_denoise`` is ``local_denoiser`` and ``fine`` is ``dit``
  (timm's ``Mlp`` ``fc1``/``fc2`` become ``mlp.0``/``mlp.2``).

The official name table: the standard names ``PRDiT-{XS,S,B,L,XL}/{10,12,14,16}/{depth}`` use stride 8 and a
reflect halo of (P - 8) / 2; two special variants use other strides and no padding: ``PRDiT-XS/4/0`` (stride 4)
and ``PRDiT-XS/4/1`` (stride 2). The official XS/4/1 cannot run a forward pass (its 4^3 windows at stride 2
without padding give (N/2 - 1)^3 tokens, its position code has (N/2)^3 rows); prdit runs the same weights with
a 1-voxel reflect halo, so its token grid is (N/2)^3.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from prdit.errors import CheckpointError
from prdit.hu import OFFICIAL_HU_RANGE
from prdit.models.registry import STANDARD_STRIDE, ModelSpec, parse_model_name

Tensors = dict[str, torch.Tensor]

#: Official names whose stride is not the standard 8.
SPECIAL_STRIDES = {"PRDiT-XS/4/0": 4, "PRDiT-XS/4/1": 2}

#: Keys that only an official state dict has (used to recognise one).
OFFICIAL_MARKERS = ("t_embedder.mlp.0.weight", "coarse.mlp_denoise.linear_final.weight")

# (official prefix, prdit prefix) for every tensor that maps one to one.
_RENAMES = (
    ("t_embedder.mlp.0.", "time_embed.linear."),
    ("t_embedder.coarse_head.", "coarse_head."),
    ("t_embedder.fine_head.", "fine_head."),
    ("coarse.mlp_denoise.adaLN_modulation.1.", "local_denoiser.modulation.1."),
    ("fine.patch_embedder.fc1.", "dit.patch_embed.mlp.0."),
    ("fine.patch_embedder.fc2.", "dit.patch_embed.mlp.2."),
    ("fine.patch_embedder.skip.", "dit.patch_embed.skip."),
    ("fine.patch_embedder.norm.", "dit.patch_embed.norm."),
    ("fine.final_layer.adaLN_modulation.1.", "dit.final_layer.adaLN_modulation.1."),
)
_BLOCK = re.compile(r"^fine\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|adaLN_modulation\.1)\.(weight|bias)$")
_BLOCK_NAMES = {"attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2",
                "adaLN_modulation.1": "adaLN_modulation.1"}
_SWIGLU = re.compile(r"^coarse\.mlp_denoise\.(mlp[12])\.(fc1_g|fc1_x|norm|fc2)\.(weight|bias)$")
# Output layers whose rows hold one S^3 block per token.
_OUTPUTS = {"coarse.mlp_denoise.linear_final.": "local_denoiser.out.", "fine.final_layer.linear.": "dit.final_layer.linear."}


def official_spec(name: str) -> tuple[ModelSpec, int]:
    """An official model name -> (its prdit :class:`ModelSpec`, its stride)."""
    spec = parse_model_name(name)
    return spec, SPECIAL_STRIDES.get(spec.name, STANDARD_STRIDE)


def is_official_state_dict(state_dict: Tensors) -> bool:
    """Whether ``state_dict`` has the official code's names (a ``module.`` DDP prefix is allowed)."""
    keys = {k.removeprefix("module.") for k in state_dict}
    return all(marker in keys for marker in OFFICIAL_MARKERS)


def _channel_last_to_first(rows: torch.Tensor, block: int) -> torch.Tensor:
    """Rows ordered (voxel, channel) -> (channel, voxel); ``block`` = S^3 voxels per channel."""
    channels = rows.shape[0] // block
    return rows.reshape(block, channels, *rows.shape[1:]).transpose(0, 1).reshape(rows.shape)


def _check_block(rows: int, stride: int, key: str) -> int:
    block = stride**3
    if rows % block:
        raise CheckpointError(f"{key} has {rows} rows, not a multiple of stride^3 = {block}: is the stride {stride} right?")
    return block


def from_official(state_dict: Tensors, stride: int) -> Tensors:
    """An official PRDiT state dict -> prdit's (same tensors, renamed, SwiGLU fused, output rows channel-first)."""
    out: Tensors = {}
    swiglu: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for raw_key, value in state_dict.items():
        key = raw_key.removeprefix("module.")
        if key.endswith("pos_embed"):  # a fixed buffer, recomputed by prdit
            continue
        match = _SWIGLU.match(key)
        if match:
            mlp, part, kind = match.groups()
            if part in ("fc1_g", "fc1_x"):
                swiglu.setdefault((mlp, kind), {})[part] = value
            else:
                out[f"local_denoiser.{mlp}.{'w3' if part == 'fc2' else 'norm'}.{kind}"] = value
            continue
        match = _BLOCK.match(key)
        if match:
            index, name, kind = match.groups()
            out[f"dit.blocks.{index}.{_BLOCK_NAMES[name]}.{kind}"] = value
            continue
        output = next((p for p in _OUTPUTS if key.startswith(p)), None)
        if output is not None:
            block = _check_block(value.shape[0], stride, key)
            out[_OUTPUTS[output] + key.removeprefix(output)] = _channel_last_to_first(value, block)
            continue
        rename = next(((old, new) for old, new in _RENAMES if key.startswith(old)), None)
        if rename is None:
            raise CheckpointError(f"official checkpoint key {key!r} has no prdit counterpart: is it a PRDiT checkpoint?")
        out[rename[1] + key.removeprefix(rename[0])] = value
    for (mlp, kind), parts in swiglu.items():
        if set(parts) != {"fc1_g", "fc1_x"}:
            raise CheckpointError(f"official checkpoint has only {sorted(parts)} of coarse.mlp_denoise.{mlp}'s SwiGLU {kind}")
        out[f"local_denoiser.{mlp}.w12.{kind}"] = torch.cat([parts["fc1_g"], parts["fc1_x"]], dim=0)
    return out


# ----------------------------------------------------------------------------------------------------------
# Whole checkpoints written by the official train.py: {model, ema, config, epoch, train_steps[, optimizer]}
# ----------------------------------------------------------------------------------------------------------

#: What the official code does per dataset (``config.data.task``): the percentile of its per-volume min-max,
#: the range it trains in (its RAD loader never applies 2x - 1) and the spacing of its 256^3 volumes in mm.
OFFICIAL_TASKS: dict[str, dict[str, Any]] = {
    "lidc": {"percentile": 99.9, "scale": "signed", "spacing_256": 1.0},
    "rad_chestct": {"percentile": 99.5, "scale": "unit", "spacing_256": 0.8},
}


def is_official_checkpoint(state: object) -> bool:
    """A dict checkpoint with official weight names and no prdit ``meta``."""
    return (
        isinstance(state, dict) and "meta" not in state and isinstance(weights := state.get("model", state.get("ema")), dict)
        and is_official_state_dict(weights)
    )


def from_official_checkpoint(state: dict, hu_range: tuple[float, float] | None = None) -> dict:
    """An official checkpoint -> a prdit-shaped one ``{model, ema, meta, step}`` that prdit can sample from.

    The model name, volume size and dataset come from the checkpoint's ``config``. Official checkpoints carry
    no HU mapping (the paper min-max normalises each volume on its own), so samples map back to HU through
    ``hu_range`` (default :data:`prdit.hu.OFFICIAL_HU_RANGE`); ``meta["source"]`` records the range and whether it
    was given or assumed, and sampling copies that into every sidecar.
    """
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "name" not in config["model"]:
        raise CheckpointError("official checkpoint has no config.model.name: cannot tell which PRDiT it holds")
    model_config, data_config = config["model"], config.get("data") or {}
    if int(model_config.get("out_channels", 2)) != 2:
        raise CheckpointError(
            f"official checkpoint with out_channels={model_config['out_channels']} is the DDPM baseline; "
            "prdit loads the image-and-noise PRDiT (out_channels 2)"
        )
    spec, stride = official_spec(str(model_config["name"]))
    task = str(data_config.get("task", "lidc"))
    if task not in OFFICIAL_TASKS:
        raise CheckpointError(f"official checkpoint of task {task!r}: prdit knows {', '.join(OFFICIAL_TASKS)}")
    image_size = int(data_config.get("image_size", 128))
    facts = OFFICIAL_TASKS[task]
    given = hu_range is not None
    low, high = (float(v) for v in (hu_range if hu_range is not None else OFFICIAL_HU_RANGE))
    if not high > low:
        raise CheckpointError(f"HU range [{low}, {high}] needs LOW < HIGH")
    weights = {key: from_official(state[key], stride) for key in ("model", "ema") if isinstance(state.get(key), dict)}
    spacing = facts["spacing_256"] * 256 / image_size
    meta = {
        "model_name": spec.name, "input_size": image_size, "stride": stride,
        "in_channels": int(model_config.get("in_channels", 1)), "out_channels": 2, "depth": spec.depth,
        "local_frozen": spec.depth > 0, "fine_tuned": [],
        "intensity": {"mode": "paper", "window": [low, high], "percentile": facts["percentile"],
                      "reference_range": [low, high], "scale": facts["scale"]},
        "spacing": [spacing] * 3,
        "diffusion": {"process": "ian", "timesteps": 1000, "noise_std": 0.5},
        "source": {
            "format": "official PRDiT checkpoint (github Fredy-Zhang/PRDiT)", "task": task,
            "epoch": state.get("epoch"), "train_steps": state.get("train_steps"),
            "hu_range": [low, high],
            "hu_range_note": ("given by the user" if given else "assumed: the official checkpoint carries no HU mapping "
                              "(each training volume was min-max normalised on its own); pass --hu-range LOW HIGH"),
            "spacing_note": f"assumed: {facts['spacing_256']} mm at 256^3, as the official preprocessing",
        },
    }
    return {**weights, "meta": meta, "step": state.get("train_steps")}
