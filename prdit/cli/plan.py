"""``prdit plan``: the peak memory per GPU of a training run before launching it, and the largest batch that fits."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="predict the peak memory per GPU of a training run (DDP / FSDP, with and without checkpointing)",
        description=(
            "Predict one training step's peak memory per rank from the model's exact parameter count and its "
            "activations per token (prdit.plan; checked against measured peaks in benchmarks/bench_plan.py), for "
            "DDP and FSDP with and without activation checkpointing, and the largest per-GPU batch that fits. "
            "Example: prdit plan --model PRDiT-XL/12/4 --size 256 --batch 2 --gpus 8 --gpu-mem 80"
        ),
    )
    parser.add_argument("--model", required=True, help="registry name, e.g. PRDiT-B/12/4 (stage 2 trains with stage 1 frozen)")
    parser.add_argument("--size", type=int, required=True, help="volume edge in voxels (128, 256)")
    parser.add_argument("--batch", type=int, default=1, help="volumes per GPU per forward (training.micro_batch_size)")
    parser.add_argument("--gpus", type=int, default=1, help="ranks in the job (all nodes together)")
    parser.add_argument("--gpu-mem", dest="gpu_mem", type=float, default=80, help="memory per GPU, GiB (default 80)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="bf16 (auto on GPUs) or fp32")
    parser.add_argument("--stride", type=int, default=None, help="model.stride, if not the model's default")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON")
    parser.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> None:
    import json

    from prdit.plan import GIB, GPU_RESERVE_BYTES, largest_batch, plan_memory

    memory = args.gpu_mem * GIB
    rows = []
    for parallel in ("ddp", "fsdp"):
        for checkpointing in (False, True):
            plan = plan_memory(args.model, args.size, args.batch, args.gpus, parallel, checkpointing, args.precision, args.stride)
            fits = largest_batch(args.model, args.size, args.gpus, parallel, checkpointing, args.precision, memory, args.stride)
            rows.append((plan, fits))
    if args.json:
        print(json.dumps([{**plan.to_dict(), "largest_batch": fits, "gpu_reserve": GPU_RESERVE_BYTES} for plan, fits in rows], indent=2))
        return
    first = rows[0][0]
    print(f"{first.model} at {first.size}^3: {first.tokens} tokens, {first.parameters / 1e6:.1f} M parameters "
          f"({first.trainable / 1e6:.1f} M trained), {args.precision}, batch {args.batch} per GPU on {args.gpus} GPU(s) "
          f"of {args.gpu_mem:g} GiB (planned peak + {GPU_RESERVE_BYTES / GIB:g} GiB CUDA context and slack)")
    print(f"{'':24} {'weights+EMA':>11} {'grads+Adam':>10} {'comm':>6} {'activ.':>8} {'peak/GPU':>9}  {'fits':>4}  largest batch")
    for plan, fits in rows:
        label = f"{plan.parallel.upper()}{' + checkpointing' if plan.checkpointing else ''}"
        peak = plan.total + GPU_RESERVE_BYTES
        print(f"{label:24} {(plan.weights + plan.ema) / GIB:10.1f}G {(plan.gradients + plan.optimizer) / GIB:9.1f}G "
              f"{(plan.communication + plan.weight_copies) / GIB:5.1f}G {plan.activations / GIB:7.1f}G {peak / GIB:8.1f}G  "
              f"{'yes' if peak <= memory else 'NO':>4}  {fits}")
