"""prdit plan: exact parameter counts, what sharding and checkpointing change, the largest batch that fits."""

import json
from pathlib import Path

import pytest
import torch

from prdit import plan as plan_module
from prdit.cli import main
from prdit.errors import ConfigError
from prdit.models.global_dit import DiTBlock
from prdit.models.local_denoiser import LocalDenoiser
from prdit.plan import (
    DIT_BLOCK_BYTES,
    GIB,
    GPU_RESERVE_BYTES,
    LOCAL_DENOISER_VALUES,
    architecture,
    largest_batch,
    plan_memory,
)


def saved_bytes(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes the forward pass saves for the backward (unique storages, weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(*inputs)
    return sum(saved.values())


def test_parameter_counts_are_the_models_own():
    stage2, stage1 = architecture("PRDiT-B/12/4", 128), architecture("PRDiT-B/12/0", 128)
    assert stage2.parameters == 93_228_992 and stage2.token_dim == 12**3  # the registry's count of the paper's model
    assert stage1.parameters == stage1.trainable == 39_156_160  # stage 1 trains everything
    assert stage2.trainable == stage2.parameters - stage1.parameters  # stage 2 freezes exactly the stage-1 model
    assert len(stage2.units) == 1 + 4 + 1 and sum(stage2.units) == stage2.parameters  # local denoiser, 4 blocks, root


def test_fsdp_shards_the_states_and_checkpointing_shrinks_the_activations():
    ddp = plan_memory("PRDiT-L/12/8", 128, 1, gpus=8, parallel="ddp")
    fsdp = plan_memory("PRDiT-L/12/8", 128, 1, gpus=8, parallel="fsdp")
    assert fsdp.weights == pytest.approx(ddp.weights / 8) and fsdp.optimizer == pytest.approx(ddp.optimizer / 8)
    assert fsdp.activations == ddp.activations and fsdp.total < ddp.total
    kept = plan_memory("PRDiT-L/12/8", 128, 1, gpus=8, parallel="fsdp", checkpointing=True)
    assert kept.activations < 0.5 * fsdp.activations
    assert plan_memory("PRDiT-L/12/8", 128, 2).activations == pytest.approx(2 * plan_memory("PRDiT-L/12/8", 128, 1).activations)
    assert plan_memory("PRDiT-L/12/8", 128, 1, precision="fp32").activations > fsdp.activations  # bf16 keeps less


def test_the_activations_per_token_are_what_the_layers_save():
    tokens, width = 128, 384
    block = DiTBlock(width, 6)
    per_token = saved_bytes(block, torch.randn(1, tokens, width, requires_grad=True), torch.randn(1, width)) / tokens
    assert per_token == pytest.approx(DIT_BLOCK_BYTES["fp32"] * width, rel=0.03)
    dim = 216
    denoiser = LocalDenoiser(dim, 128)
    x, cond = torch.randn(1, tokens, dim), torch.randn(1, dim)
    # The plan's value was counted over whole models' forward passes; the module alone keeps ~17 values.
    assert saved_bytes(denoiser, x, cond) / (4 * tokens * dim) == pytest.approx(LOCAL_DENOISER_VALUES["fp32"], rel=0.15)
    denoiser.grad_checkpoint = True  # the plan keeps the tokens only: 1 value
    assert saved_bytes(denoiser, x, cond) / (4 * tokens * dim) < 1.2


def test_stage_one_checkpointing_rebuilds_one_token_group_at_a_time(monkeypatch):
    plain = plan_memory("PRDiT-B/12/0", 256, 1, checkpointing=False, precision="fp32")
    grouped = plan_memory("PRDiT-B/12/0", 256, 1, checkpointing=True, precision="fp32")
    assert grouped.total < 0.6 * plain.total  # 32768 tokens: the activations dominate, and most are not kept
    assert grouped.backward_tail > plain.backward_tail  # the backward rebuilds a group beside the gradients
    monkeypatch.setattr(plan_module, "CHECKPOINT_CHUNKS", 1)  # one region over all tokens saves nothing
    assert plan_memory("PRDiT-B/12/0", 256, 1, checkpointing=True, precision="fp32").activations >= plain.activations


def test_the_largest_batch_fits_and_one_more_does_not():
    memory = 40 * GIB
    fits = largest_batch("PRDiT-B/12/4", 256, 4, "fsdp", False, "bf16", memory)
    assert fits >= 1
    assert plan_memory("PRDiT-B/12/4", 256, fits, 4, "fsdp").total + GPU_RESERVE_BYTES <= memory
    assert plan_memory("PRDiT-B/12/4", 256, fits + 1, 4, "fsdp").total + GPU_RESERVE_BYTES > memory
    assert largest_batch("PRDiT-B/12/4", 256, 4, "fsdp", False, "bf16", 1 * GIB) == 0


def test_the_command_prints_every_mode_and_checks_its_input(capsys):
    assert main(["plan", "--model", "PRDiT-XL/12/4", "--size", "256", "--batch", "2", "--gpus", "8", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    assert "32768 tokens" in out and all(mode in out for mode in ("DDP ", "DDP + checkpointing", "FSDP ", "FSDP + checkpointing"))
    assert main(["plan", "--model", "PRDiT-B/12/4", "--size", "128", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["parallel"], r["checkpointing"]) for r in rows] == [("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True)]
    with pytest.raises(ConfigError):
        plan_memory("PRDiT-B/12/4", 128, 0)


def test_the_documented_plan_is_the_commands_output(capsys):
    """docs/training.md shows the real output of its `prdit plan` example (the plan's numbers move with the code)."""
    command = "prdit plan --model PRDiT-XL/12/4 --size 256 --batch 2 --gpus 8 --gpu-mem 80"
    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    after = page.split(f"```bash\n{command}\n```", 1)[1]
    documented = after.split("```text\n", 1)[1].split("```", 1)[0]
    assert main(command.split()[1:]) == 0
    assert capsys.readouterr().out == documented
