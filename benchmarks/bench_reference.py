"""prdit's training step against a reference network in the official code's layer order, side by side.

The reference (``ReferencePRDiT`` below, written for this benchmark) computes the same function as prdit's
``PRDiT`` with the layer order and layouts of the paper's released code: two separate SwiGLU input matrices,
adaLN modulation computed inside every block, the attention run through SDPA under bf16 autocast (also on CPU)
and cast back to fp32, the stage-1 path under ``no_grad`` when it is frozen. ``--check`` loads prdit's weights
into it and compares the outputs, so both sides are known to do the same arithmetic.

A step is forward, an MSE on both heads, backward and an AdamW update (by default each side's own: fused in
prdit's trainer, torch's default in the official train.py; ``--adamw fused`` compares the networks alone).
Time: median over interleaved repeats in one process (prdit, reference, prdit, ...), so that load from other
processes hits both alike; also one network call as in sampling (prdit under ``inference_mode``, the
reference under ``no_grad``). Memory: every model in a fresh process; its peak RSS (``VmHWM``) over the
whole run (torch itself and the weights included) and the peak growth over the steps from the built model
(gradients, AdamW state, activations); on CUDA the allocator's peak.

CPU, the issue-15 table (about 15 min on 2 shared cores):
    python -m benchmarks.bench_reference
prdit with training.precision bf16 (CPU autocast) against the reference as released:
    python -m benchmarks.bench_reference --precision bf16 --name reference_cpu_bf16
GPU (see benchmarks/README.md for the full set of commands):
    python -m benchmarks.bench_reference --device cuda --sizes 64 128 --batches 1 2 --repeats 10 --tf32
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import common
from prdit.models import create_model
from prdit.models.global_dit import position_code
from prdit.models.linear import set_cpu_onednn
from prdit.models.prdit import PRDiT, TimestepEmbedder
from prdit.models.registry import parse_model_name
from prdit.models.tokens import extract_tokens, tile_tokens, token_grid

CASES = ("B/12/0", "B/12/4", "B/12/4-frozen")
# "own": each side as it trains: prdit's trainer uses fused AdamW, the official train.py torch's default (a
# for-loop over the tensors on CPU, foreach on CUDA).
ADAMW = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}, "default": {}}


# ----------------------------------------------------------------------------------------------------------
# Reference network (official layer order)
# ----------------------------------------------------------------------------------------------------------


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RefSwiGLU(nn.Module):
    """Two input matrices (gate, value), silu(gate) * value, LayerNorm, output matrix."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1_g = nn.Linear(dim, dim)
        self.fc1_x = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class RefLocal(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp1, self.mlp2 = RefSwiGLU(dim), RefSwiGLU(dim)
        self.linear_final = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, shift2, scale2, shift3, scale3 = self.adaLN_modulation(c).chunk(6, dim=1)
        h = self.mlp1(_modulate(self.norm1(x), shift1, scale1))
        h = self.mlp2(_modulate(self.norm2(h), shift2, scale2))
        return self.linear_final(_modulate(h + x, shift3, scale3))


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads).permute(0, 3, 1, 2, 4)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.proj(out.float().reshape(batch, length, width))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        mlp = self.fc2(F.gelu(self.fc1(_modulate(self.norm2(x), shift_mlp, scale_mlp)), approximate="tanh"))
        return x + gate_mlp.unsqueeze(1) * mlp


class RefFine(nn.Module):
    def __init__(self, token_dim: int, dim: int, heads: int, depth: int, out_dim: int, grid) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(token_dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.skip = nn.Linear(token_dim, dim, bias=False)
        self.embed_norm = nn.LayerNorm(dim)
        self.register_buffer("pos_embed", position_code(grid, dim)[None], persistent=False)
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.embed_norm(self.fc2(F.gelu(self.fc1(x), approximate="tanh")) + self.skip(x)) + self.pos_embed
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(h), shift, scale))


class ReferencePRDiT(nn.Module):
    """The PRDiT function in the official layer order; ``frozen`` runs the stage-1 path under no_grad; ``stride``
    other than the official 8 is for small models (the GPU check's dry run)."""

    def __init__(self, name: str, input_size: int, frozen: bool, stride: int = 8) -> None:
        super().__init__()
        spec = parse_model_name(name)
        self.patch, self.stride, self.frozen = spec.patch, stride, frozen
        token_dim, hidden = spec.patch**3, spec.hidden_size
        out_dim = 2 * self.stride**3
        grid = token_grid((input_size,) * 3, self.patch, self.stride)
        self.t_mlp = nn.Linear(256, hidden)
        self.coarse_head = nn.Linear(hidden, token_dim)
        self.coarse = RefLocal(token_dim, out_dim)
        self.depth = spec.depth
        if spec.depth:
            self.fine_head = nn.Linear(hidden, hidden)
            self.fine = RefFine(token_dim, hidden, spec.num_heads, spec.depth, out_dim, grid)
        self.stage1 = [self.t_mlp, self.coarse_head, self.coarse]
        if frozen:
            for module in self.stage1:
                module.requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        grid = token_grid(x.shape[2:], self.patch, self.stride)
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            shared = F.silu(self.t_mlp(TimestepEmbedder.sinusoid(t, 256)))
            patches = extract_tokens(x, self.patch, self.stride)
            out = self.coarse(patches, self.coarse_head(shared))
        if self.depth:
            out = out + self.fine(patches, self.fine_head(shared))
        return tile_tokens(out, grid, self.stride)

    @torch.no_grad()
    def load_from(self, model: PRDiT) -> None:
        """Copy prdit's weights (the fused SwiGLU input matrix split into its gate and value halves)."""
        src = dict(model.state_dict())
        pairs = {"t_mlp": "time_embed.linear", "coarse_head": "coarse_head", "coarse.linear_final": "local_denoiser.out",
                 "coarse.adaLN_modulation.1": "local_denoiser.modulation.1"}
        for i in (1, 2):
            mlp = f"local_denoiser.mlp{i}"
            gate_w, value_w = src[f"{mlp}.w12.weight"].chunk(2)
            gate_b, value_b = src[f"{mlp}.w12.bias"].chunk(2)
            src.update({f"{mlp}.g.weight": gate_w, f"{mlp}.g.bias": gate_b, f"{mlp}.x.weight": value_w,
                        f"{mlp}.x.bias": value_b})
            pairs.update({f"coarse.mlp{i}.fc1_g": f"{mlp}.g", f"coarse.mlp{i}.fc1_x": f"{mlp}.x",
                          f"coarse.mlp{i}.norm": f"{mlp}.norm", f"coarse.mlp{i}.fc2": f"{mlp}.w3"})
        if self.depth:
            pairs.update({"fine_head": "fine_head", "fine.fc1": "dit.patch_embed.mlp.0", "fine.fc2": "dit.patch_embed.mlp.2",
                          "fine.skip": "dit.patch_embed.skip", "fine.embed_norm": "dit.patch_embed.norm",
                          "fine.final_modulation.1": "dit.final_layer.adaLN_modulation.1",
                          "fine.linear": "dit.final_layer.linear"})
            for i in range(self.depth):
                block = f"dit.blocks.{i}"
                pairs.update({f"fine.blocks.{i}.attn.qkv": f"{block}.attn.qkv", f"fine.blocks.{i}.attn.proj": f"{block}.attn.proj",
                              f"fine.blocks.{i}.fc1": f"{block}.mlp.0", f"fine.blocks.{i}.fc2": f"{block}.mlp.2",
                              f"fine.blocks.{i}.adaLN_modulation.1": f"{block}.adaLN_modulation.1"})
        own = self.state_dict()
        for key in own:
            module, leaf = key.rsplit(".", 1)
            own[key].copy_(src[f"{pairs[module]}.{leaf}"])


# ----------------------------------------------------------------------------------------------------------
# Steps and measurements
# ----------------------------------------------------------------------------------------------------------


def build(side: str, case: str, size: int, batch: int, device: str, precision: str, adamw: str, seed: int = 0,
          compile: bool = False, grad_checkpoint: bool = False, stride: int | None = None):
    """(model, training step, sampling call) of ``side`` ('prdit' or 'reference') for one case.

    ``compile`` (torch.compile) and ``grad_checkpoint`` (activation checkpointing) apply to prdit only;
    ``stride`` (default: the model name's standard 8) to both.
    """
    name, frozen = f"PRDiT-{case.split('-')[0]}", case.endswith("-frozen")
    torch.manual_seed(seed)
    model = create_model(name, size, stride=stride, grad_checkpoint=grad_checkpoint and side == "prdit")
    with torch.no_grad():  # trained-looking weights: zero-initialised layers would make some gradients trivial
        for p in model.parameters():
            p.normal_(0, 0.02)
    if frozen:
        model.freeze_local_denoiser()
    if side == "reference":
        reference = ReferencePRDiT(name, size, frozen, model.stride)
        reference.load_from(model)
        model = reference
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if compile and side == "prdit":
        model = torch.compile(model)
    if adamw == "own":
        adamw = "fused" if side == "prdit" else "default"
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, **ADAMW[adamw])
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch, 1, size, size, size), generator=generator).mul(2).sub(1).to(device)
    t = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    target = torch.randn((batch, 2, size, size, size), generator=generator).to(device)
    # The official train.py has no autocast: the reference always runs in fp32 (with its bf16 attention).
    bf16 = precision == "bf16" and side == "prdit"
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with amp:
            out = model(x, t)
        F.mse_loss(out.float(), target).backward()
        optimizer.step()

    # One network call as in sampling: prdit's pipeline runs under inference_mode, the official code's
    # samplers under no_grad.
    grad_mode = torch.inference_mode if side == "prdit" else torch.no_grad

    def call() -> None:
        with grad_mode(), amp:
            model(x, t)

    return model, step, call


def memory_probe(side: str, case: str, size: int, batch: int, device: str, precision: str, adamw: str,
                 steps: int, onednn: bool = True, compile: bool = False, grad_checkpoint: bool = False) -> dict:
    """Run inside a fresh process: peak memory of ``steps`` training steps."""
    set_cpu_onednn(onednn)
    model, step, _ = build(side, case, size, batch, device, precision, adamw, compile=compile,
                           grad_checkpoint=grad_checkpoint)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        built = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_bytes": peak, "step_bytes": peak - built}
    built = common.proc_status_bytes("VmRSS")
    for _ in range(steps):
        step()
    return {"peak_bytes": common.proc_status_bytes("VmHWM"), "step_bytes": common.proc_status_bytes("VmHWM") - built}


def memory_in_fresh_process(*args) -> dict:
    code = ("import sys, json; sys.path.insert(0, {root!r}); from benchmarks import bench_reference as b;"
            "print(json.dumps(b.memory_probe(*{args!r})))").format(root=str(Path(__file__).resolve().parents[1]),
                                                                    args=args)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"memory probe {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_same_function(device: str) -> float:
    """Largest |prdit - reference| relative to the output scale, B/12/4 at 32^3 (bf16 attention in the reference)."""
    model, _, _ = build("prdit", "B/12/4", 32, 1, device, "fp32", "for-loop")
    reference = ReferencePRDiT("PRDiT-B/12/4", 32, frozen=False).to(device)
    reference.load_from(model)
    x = torch.rand(1, 1, 32, 32, 32, device=device) * 2 - 1
    t = torch.tensor([321], device=device)
    with torch.no_grad():
        ours, theirs = model(x, t), reference(x, t)
    return float((ours - theirs).abs().max() / ours.abs().max())


def interleaved(runs: dict, repeats: int, device: str, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each run, one warm-up each (unless ``warmup`` is False), then A, B, A, B, ... so that machine
    load hits both alike."""
    for run in runs.values() if warmup else ():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            common.synchronize(device)
            began = time.perf_counter()
            run()
            common.synchronize(device)
            times[name].append(time.perf_counter() - began)
    return times


def demo_before_after(repeats: int, batch: int = 8) -> list[dict]:
    """The phantom demo's two training stages (PRDiT-T/6/0, PRDiT-T/6/2 with the local denoiser frozen; 32^3,
    stride 4, batch 8, IaN loss) as before issue 15 (linears on torch's BLAS, foreach AdamW) and after
    (oneDNN linears, fused AdamW), interleaved in one process."""
    from prdit.diffusion import create_diffusion

    diffusion = create_diffusion(None)
    rows = []
    for name in ("PRDiT-T/6/0", "PRDiT-T/6/2"):
        runs = {}
        for label, onednn, adamw in (("before", False, "foreach"), ("after", True, "fused")):
            torch.manual_seed(0)
            model = create_model(name, 32, stride=4)
            if model.depth:
                model.freeze_local_denoiser()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, **ADAMW[adamw])
            x0 = torch.rand((batch, 1, 32, 32, 32), generator=torch.Generator().manual_seed(1)) * 2 - 1
            generator = torch.Generator().manual_seed(2)

            def step(model=model, optimizer=optimizer, x0=x0, generator=generator, onednn=onednn) -> None:
                previous = set_cpu_onednn(onednn)
                optimizer.zero_grad(set_to_none=True)
                diffusion.training_loss(model, x0, generator).backward()
                optimizer.step()
                set_cpu_onednn(previous)

            runs[label] = step
        times = interleaved(runs, repeats, "cpu")
        row = {"model": name, "seconds_median": {k: common.median(v) for k, v in times.items()},
               "speedup": common.median([b / a for b, a in zip(times["before"], times["after"])]),
               "load": load_average()}
        print(f"demo {name}: before {row['seconds_median']['before']:.3f} s, after {row['seconds_median']['after']:.3f} s,"
              f" x{row['speedup']:.2f}; load {row['load']}", flush=True)
        rows.append(row)
    return rows


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="prdit's training.precision (the reference runs as released: fp32, bf16 attention)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls for fp32 on CUDA")
    parser.add_argument("--adamw", default="own", choices=["own", *ADAMW],
                        help="AdamW implementation: own = each side's (prdit fused, official torch default), or one for both")
    parser.add_argument("--compile", action="store_true", help="torch.compile prdit's model")
    parser.add_argument("--grad-checkpoint", action="store_true", help="prdit with activation checkpointing")
    parser.add_argument("--no-onednn", action="store_true", help="prdit's fp32 CPU linears on torch's BLAS (MKL)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per side (interleaved)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per memory probe (fresh process)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--check", action="store_true", help="first check that both sides compute the same function")
    parser.add_argument("--demo", action="store_true",
                        help="only the phantom demo's training steps before/after this work (CPU)")
    parser.add_argument("--name", default=None, help="results file stem (default: reference_<device>)")
    args = parser.parse_args()
    common.setup_device(args.device, args.tf32)
    set_cpu_onednn(not args.no_onednn)
    if args.demo:
        payload = {"machine": common.machine(), "args": vars(args), "demo": demo_before_after(args.repeats)}
        print(f"wrote {common.write_json(args.name or 'reference_demo_cpu', payload)}")
        return
    if args.check:
        print(f"max |prdit - reference| / max |prdit| = {check_same_function(args.device):.2e} (bf16 attention)")
    results = []
    for size in args.sizes:
        for batch in args.batches:
            for case in args.cases:
                row = {"case": case, "size": size, "batch": batch, "precision": args.precision,
                       "load_before": load_average()}
                built = {side: build(side, case, size, batch, args.device, args.precision, args.adamw,
                                     compile=args.compile, grad_checkpoint=args.grad_checkpoint)
                         for side in ("prdit", "reference")}
                times = interleaved({side: b[1] for side, b in built.items()}, args.repeats, args.device)
                row["seconds"] = times
                row["seconds_median"] = {side: common.median(v) for side, v in times.items()}
                # Ratio per interleaved pair, then the median: a load spike hits a pair, not one side's median.
                row["speedup"] = common.median([r / p for p, r in zip(times["prdit"], times["reference"])])
                if not case.endswith("-frozen"):  # the frozen case's forward is the same network
                    calls = interleaved({side: b[2] for side, b in built.items()}, args.repeats, args.device)
                    row["call_seconds_median"] = {side: common.median(v) for side, v in calls.items()}
                    row["call_speedup"] = common.median([r / p for p, r in zip(calls["prdit"], calls["reference"])])
                del built
                gc.collect()
                if not args.no_memory:
                    mem = {side: memory_in_fresh_process(side, case, size, batch, args.device, args.precision,
                                                         args.adamw, args.memory_steps, not args.no_onednn,
                                                         args.compile, args.grad_checkpoint)
                           for side in ("prdit", "reference")}
                    row["memory"] = mem
                    row["peak_ratio"] = mem["prdit"]["peak_bytes"] / mem["reference"]["peak_bytes"]
                    row["step_memory_ratio"] = mem["prdit"]["step_bytes"] / mem["reference"]["step_bytes"]
                row["load_after"] = load_average()
                results.append(row)
                med = row["seconds_median"]
                line = (f"{case:14s} {size}^3 batch {batch}: prdit {med['prdit']:.3f} s, reference "
                        f"{med['reference']:.3f} s, speed x{row['speedup']:.2f}")
                if "memory" in row:
                    mem = row["memory"]
                    line += (f"; peak {mem['prdit']['peak_bytes'] / 2**20:.0f} vs {mem['reference']['peak_bytes'] / 2**20:.0f}"
                             f" MiB (x{row['peak_ratio']:.2f}), step {mem['prdit']['step_bytes'] / 2**20:.0f} vs "
                             f"{mem['reference']['step_bytes'] / 2**20:.0f} MiB (x{row['step_memory_ratio']:.2f})")
                if "call_speedup" in row:
                    line += f"; sampling call x{row['call_speedup']:.2f}"
                print(line + f"; load {row['load_before']} -> {row['load_after']}", flush=True)
    name = args.name or f"reference_{torch.device(args.device).type}"
    payload = {"machine": common.machine(), "args": vars(args), "results": results}
    print(f"wrote {common.write_json(name, payload)}")


if __name__ == "__main__":
    main()
