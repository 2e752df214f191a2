"""Conditional generation on held-out phantom label maps: does the generated CT follow the mask and the attributes?

For ``--masks`` phantoms the training never saw (seeds from 50000), the conditional model samples one volume per
label map at each guidance scale (``--guidance``), and the generated tissue is compared with the condition:

- **Dice** of lung (generated: below -500 HU inside the filled body; condition: lung + airway labels), body
  (generated: the filled body mask above -500 HU, lungs included; condition: every label > 0) and bone (generated:
  above 200 HU; condition: the bone label). The same Dice of the real phantoms with their own label maps is the
  ceiling (the point-spread blur and partial volumes of a 32^3 grid keep it below 1).
- **Realism**: HU-histogram W1 and tissue fractions against the real phantoms of those masks, for each guidance
  scale and for the unconditional shipped model (``--pretrained phantom``) drawn with the same seeds.
- **Diversity**: mean MS-SSIM between ``--diversity-samples`` samples of one mask (lower = more diverse), beside
  the same between unconditional samples and between real phantoms.
- **Attribute control**: body_diameter_mm requested over ``--sweep`` (no mask), ``--sweep-samples`` each; the
  Pearson correlation between the requested and the measured effective diameter (of the HU body mask).

Writes ``benchmarks/results/conditional_<name>.json`` and ``conditional_<name>.png`` (mask contours over
generated slices). Smoke run: ``python -m benchmarks.bench_conditional --masks 2 --steps 2 --sweep 270 290
--sweep-samples 1 --diversity-samples 2 --name smoke``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from prdit.data.conditions import PHANTOM_LABELS, effective_diameter_mm
from prdit.data.phantom import generate_phantom, phantom_label_map
from prdit.evaluation.anatomy import body_and_lung_masks
from prdit.evaluation.data import FEATURE_INPUT
from prdit.evaluation.evaluate import evaluate_sets
from prdit.evaluation.metrics import ms_ssim_diversity
from prdit.io import atomic_write_bytes, atomic_write_text
from prdit.sample import load_pipeline, pretrained_weights

RESULTS = Path(__file__).parent / "results"
CONFIG = Path(__file__).resolve().parents[1] / "prdit" / "configs" / "phantom" / "conditional.yaml"
HELD_OUT_SEED = 50000
BONE_HU = 200.0  # the issue's bone threshold for Dice (cancellous bone of the phantoms starts at 150 HU)
DICE_TISSUES = ("lung", "body", "bone")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def generated_tissues(hu: np.ndarray) -> dict[str, np.ndarray]:
    body, lung = body_and_lung_masks(hu)
    return {"lung": lung, "body": body, "bone": hu > BONE_HU}


def condition_tissues(labels: np.ndarray) -> dict[str, np.ndarray]:
    lung = np.isin(labels, [PHANTOM_LABELS["lung"], PHANTOM_LABELS["airway"]])
    return {"lung": lung, "body": labels > 0, "bone": labels == PHANTOM_LABELS["bone"]}


def dice_scores(volumes: np.ndarray, masks: np.ndarray) -> dict[str, dict[str, float]]:
    per = {t: [] for t in DICE_TISSUES}
    for hu, labels in zip(volumes, masks):
        made, wanted = generated_tissues(hu), condition_tissues(labels)
        for tissue in DICE_TISSUES:
            per[tissue].append(dice(made[tissue], wanted[tissue]))
    return {t: {"mean": float(np.mean(v)), "min": float(np.min(v))} for t, v in per.items()}


def realism(real: np.ndarray, fake: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """HU-histogram W1, tissue fractions and FID / MMD (the evaluation protocol's MedicalNet features: the
    deterministic random-init network, as MedicalNet's weights are not shipped) of ``fake`` against ``real``."""
    metrics = evaluate_sets(list(real), list(fake), spacing=spacing, max_ms_ssim_pairs=1)
    fractions = metrics["offline"]["tissue_fractions"]
    return {"hu_w1": metrics["offline"]["hu_histogram"]["wasserstein_hu"],
            "tissue_fractions": {name: {"fake": v["fake_mean"], "real": v["real_mean"]} for name, v in fractions.items()},
            "fid": metrics["fid"], "mmd": metrics["mmd"]}


def same_mask_diversity(pipeline, masks: np.ndarray, samples: int, steps: int, guidance: float) -> float:
    """Mean MS-SSIM between ``samples`` volumes of one mask, over the first two masks (lower = more diverse)."""
    values = []
    for i in range(min(2, len(masks))):
        volumes = draw(pipeline, samples, 100 + 10 * i, steps, mask=masks[i], guidance_scale=guidance)
        values.append(ms_ssim_diversity(FEATURE_INPUT.to_model(volumes))["mean"])
    return float(np.mean(values))


def draw(pipeline, count: int, seed: int, steps: int, **condition) -> np.ndarray:
    return pipeline.sample(count, steps=steps, seed=seed, batch_size=count, progress=False, **condition)[:, 0].numpy()


CONTOURS = (("body", "yellow"), ("lung", "cyan"), ("bone", "red"))
WINDOW = (-1000, 600)  # HU: lung, soft tissue and bone all visible


def picture(path: Path, masks: np.ndarray, real: np.ndarray, rows: list[tuple[str, np.ndarray]], title: str) -> None:
    """The condition's contours over the middle axial and coronal slices: the real phantom of each mask, then every
    generated set (one column each), for the first three masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = min(3, len(masks))
    columns = [("real phantom\n(its own mask)", real)] + rows
    figure, axes = plt.subplots(2 * shown, len(columns), figsize=(1.65 * len(columns) + 0.6, 1.65 * 2 * shown + 0.7), squeeze=False)
    image = None
    for i in range(shown):
        wanted = condition_tissues(masks[i])
        for j, (name, volumes) in enumerate(columns):
            for k, view in enumerate(("axial", "coronal")):
                def cut(volume: np.ndarray) -> np.ndarray:
                    return volume[len(volume) // 2] if view == "axial" else volume[:, volume.shape[1] // 2][::-1]

                axis = axes[2 * i + k, j]
                image = axis.imshow(cut(volumes[i]), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
                for tissue, colour in CONTOURS:
                    mask = cut(wanted[tissue])
                    if mask.any() and not mask.all():
                        axis.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
                axis.set_xticks([])
                axis.set_yticks([])
                if i == 0 and k == 0:
                    axis.set_title(name, fontsize=8)
                if j == 0:
                    axis.set_ylabel(f"mask {i + 1}, {view}", fontsize=8)
    legend = [Line2D([], [], color=colour, label=f"condition {tissue}") for tissue, colour in CONTOURS]
    figure.suptitle(f"{title}\ncondition contours over the generated volume's middle slices; window {WINDOW[0]}..{WINDOW[1]} HU",
                    fontsize=9)
    figure.tight_layout(rect=(0, 0.025, 0.92, 1), h_pad=0.4, w_pad=0.3)
    figure.legend(handles=legend, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.46, 0.0))
    bar = figure.add_axes((0.93, 0.3, 0.012, 0.4))
    figure.colorbar(image, cax=bar).set_label("HU", fontsize=8)
    bar.tick_params(labelsize=7)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def train_baseline(config, minutes: float, out_dir: Path, every: int, device: str = "cpu") -> Path:
    """Train the conditional MONAI U-Net (:class:`benchmarks.common.ConditionalUNet`) as prdit's trainer trains a
    conditional PRDiT with ``config``: its data and label maps, batch stream, condition dropout, IaN loss, AdamW,
    LR schedule, gradient clipping, EMA and precision; for ``minutes`` of wall time (or ``training.total_steps``).

    Writes the EMA and the raw weights every ``every`` steps and at the end as ``out_dir/unet-step-NNNNNNN.pt`` with the
    steps, wall and CPU seconds reached, and ``out_dir/log.jsonl``; returns the last checkpoint."""
    from torch.utils.data import DataLoader

    from benchmarks.common import ConditionalUNet, count_parameters, matched_unet_base
    from prdit.data.dataset import build_datasets
    from prdit.diffusion import create_diffusion
    from prdit.runtime import autocast_for
    from prdit.train.batches import StepBatchSampler, StreamDataset, noise_generator, split_batch
    from prdit.train.ema import create_ema, ema_decay_at, update_ema
    from prdit.train.trainer import build_model, lr_factor, seed_everything

    tcfg, dev = config.training, torch.device(device)
    seed_everything(tcfg.seed)
    train_set, _ = build_datasets(config.data, seed=tcfg.seed, progress=False, condition=config.model.condition)
    diffusion = create_diffusion(config.diffusion)
    prdit_params = count_parameters(build_model(config, diffusion.model_out_channels))
    base = matched_unet_base(prdit_params)
    model = ConditionalUNet(base, len(config.model.condition.labels)).to(dev)
    ema = create_ema(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay, fused=True)
    batch = tcfg.global_batch_size
    loader = DataLoader(StreamDataset(train_set, tcfg.seed), batch_sampler=StepBatchSampler(batch, 0, 1, batch, 0, tcfg.total_steps),
                        num_workers=config.data.num_workers)
    source = train_set.condition
    meta = {"base": base, "unet_params": count_parameters(model), "prdit_params": prdit_params, "label_values": {
        name: source.label_values[name] for name in config.model.condition.labels}, "batch": batch, "precision": tcfg.precision}
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"conditional U-Net base {base}: {meta['unet_params'] / 1e6:.2f} M params (PRDiT {prdit_params / 1e6:.2f} M); "
          f"{minutes} wall minutes, batch {batch}, {tcfg.precision}", flush=True)
    began, cpu_began = time.perf_counter(), time.process_time()
    last = out_dir / "unet-step-0000000.pt"
    with open(out_dir / "log.jsonl", "a") as log:
        for step, items in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = tcfg.lr * lr_factor(step, tcfg)
            x0, condition = split_batch(items, source, dev)
            generator = noise_generator(tcfg.seed, step * batch, dev)
            assert condition is not None  # a conditional config's batches carry label maps
            condition = condition.dropped(config.model.condition.dropout, generator)
            with autocast_for(tcfg.precision, dev):
                loss = diffusion.training_loss(model, x0, generator=generator, condition=condition)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip or math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update_ema(ema, model, ema_decay_at(step, tcfg.ema_decay, tcfg.ema_warmup))
            done, wall, cpu = step + 1, time.perf_counter() - began, time.process_time() - cpu_began
            finished = wall >= minutes * 60 or done == tcfg.total_steps
            if done % config.logging.log_every == 0 or finished:
                log.write(json.dumps({"step": done, "loss": float(loss.detach()), "wall_seconds": wall, "cpu_seconds": cpu}) + "\n")
                log.flush()
            if done % every == 0 or finished:
                last = out_dir / f"unet-step-{done:07d}.pt"
                state = {"ema": ema.state_dict(), "model": model.state_dict(), "step": done, "wall_seconds": wall, "cpu_seconds": cpu, **meta}
                atomic_write_bytes(last, serialise(state))
            if finished:
                break
    print(f"U-Net: {done} steps in {wall / 60:.1f} wall min ({cpu / 60:.1f} CPU min); wrote {last}", flush=True)
    return last


def unet_pipeline(path: Path, config, weights: str = "ema"):
    """A :class:`prdit.sample.Pipeline` around a U-Net checkpoint of :func:`train_baseline`: the same sampler,
    precision, seeds, guidance and HU mapping as a PRDiT pipeline."""
    from benchmarks.common import ConditionalUNet
    from prdit.data.dataset import mapping_from_config
    from prdit.diffusion import create_diffusion
    from prdit.io import sha256_file
    from prdit.sample import Pipeline

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ConditionalUNet(state["base"], len(state["label_values"]))
    model.load_state_dict(state[weights])
    model.eval().requires_grad_(False)
    size = config.data.image_size
    _, _, spacing = held_out(1, size)
    pipeline = Pipeline(model=model, diffusion=create_diffusion(config.diffusion), mapping=mapping_from_config(config.data),  # type: ignore[arg-type]
                        spacing=spacing, input_size=size, device=torch.device("cpu"), checkpoint=path,
                        checkpoint_sha256=sha256_file(path), weights=weights,
                        condition_spec={"labels": state["label_values"], "attributes": []})
    training = {k: state[k] for k in ("step", "wall_seconds", "cpu_seconds", "batch", "precision", "unet_params", "prdit_params", "base")}
    return pipeline, training


def scratch_training(path: Path, cpu_seconds: float | None) -> dict:
    """Steps and wall seconds of a prdit-trainer checkpoint, from its run's log (steps_per_s since the loop began)."""
    from prdit.train.logger import read_log

    step = int(torch.load(path, map_location="cpu", weights_only=False)["step"])
    records = [r for r in read_log(path.parent.parent / "log.jsonl") if r.get("step") == step and "steps_per_s" in r]
    return {"step": step, "wall_seconds": step / records[-1]["steps_per_s"] if records else None, "cpu_seconds": cpu_seconds}


def baseline_results(args, config, unet_path: Path | None, started: float) -> None:
    """The U-Net, the from-scratch PRDiT (``--scratch``) and the shipped fine-tuned PRDiT on the held-out masks:
    Dice, realism and same-mask diversity at each ``--guidance``; writes ``conditional_<name>_baseline.json``."""
    real, masks, spacing = held_out(args.masks, config.data.image_size)
    contenders = []
    for weights in args.weights:  # the recipe's EMA lags far behind in short runs (decay 0.998, no warm-up): raw too
        if unet_path is not None:
            unet, unet_training = unet_pipeline(unet_path, config, weights)
            contenders.append((f"unet_{weights}", unet, {
                "checkpoint": str(unet_path), "weights": weights, "training": unet_training,
                "description": "MONAI DiffusionModelUNet, label one-hot channels concatenated to the input, IaN loss"}))
        for path, cpu in zip(args.scratch, args.scratch_cpu_seconds + [None] * len(args.scratch)):
            training = scratch_training(Path(path), cpu)
            contenders.append((f"prdit_scratch_step_{training['step']}_{weights}", load_pipeline(path, device="cpu", use_ema=weights == "ema"), {
                "checkpoint": path, "weights": weights, "training": training,
                "description": f"{config.model.name} trained from scratch with the same recipe (prdit train --from_scratch)"}))
    if not args.no_shipped:
        shipped = str(pretrained_weights("phantom-mask"))
        contenders.append(("prdit_shipped", load_pipeline(shipped, device="cpu"), {
            "checkpoint": shipped, "description": "the shipped phantom-mask model: 1200 fine-tuning steps on top of the "
            "unconditional phantom-32 model's pre-training (more compute than the others)"}))
    result: dict = {**protocol(args, real, masks, spacing), "config": args.config, "overrides": args.set,
                    "guidance": args.guidance, "contenders": {}}
    for key, pipeline, info in contenders:
        result["contenders"][key] = {**info, "by_guidance": {str(w): measure(pipeline, real, masks, spacing, w, args)[0] for w in args.guidance}}
    result["minutes"] = round((time.time() - started) / 60, 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"conditional_{args.name}_baseline.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def merge_baselines(names: list[str], name: str) -> None:
    """One baseline table from runs made as separate processes (on separate cores) with the same protocol."""
    runs = [json.loads((RESULTS / f"conditional_{n}_baseline.json").read_text()) for n in names]
    shared = ("masks", "held_out_seeds", "sampler", "steps", "guidance", "ceiling_real_phantoms", "floor_real_vs_real")
    for other, n in zip(runs[1:], names[1:]):
        differing = [k for k in shared if other[k] != runs[0][k]]
        if differing:
            raise SystemExit(f"error: conditional_{n}_baseline.json differs from {names[0]}'s in {', '.join(differing)}: not the same protocol")
    merged = {**runs[0], "contenders": {k: v for run in runs for k, v in run["contenders"].items()}, "merged_from": names,
              "minutes": max(run["minutes"] for run in runs)}
    out = RESULTS / f"conditional_{name}_baseline.json"
    atomic_write_text(out, json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")


def serialise(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="conditional model (default: the shipped phantom-mask)")
    parser.add_argument("--masks", type=int, default=12)
    parser.add_argument("--steps", type=int, default=25, help="ian-2m steps")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--default-guidance", type=float, default=None, help="for diversity and the sweep (default: the model's)")
    parser.add_argument("--sweep", type=float, nargs="+", default=[260.0, 270.0, 280.0, 290.0, 300.0])
    parser.add_argument("--sweep-samples", type=int, default=3)
    parser.add_argument("--diversity-samples", type=int, default=4)
    parser.add_argument("--part", choices=["all", "guidance", "attributes", "baseline"], default="all",
                        help="guidance: Dice and realism per guidance scale (and the picture); attributes: diversity and the "
                        "attribute sweep; all: both (run the two parts as two processes to use two cores); baseline: train "
                        "the conditional MONAI U-Net for --minutes and compare it with PRDiT (see --unet-ckpt, --scratch)")
    parser.add_argument("--minutes", type=float, default=30.0, help="baseline: wall minutes of U-Net training")
    parser.add_argument("--config", default=str(CONFIG), help="baseline: the training recipe both models follow")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="baseline: overrides of --config")
    parser.add_argument("--baseline-dir", default=str(Path("results") / "conditional-baseline"),
                        help="baseline: where the U-Net's checkpoints go")
    parser.add_argument("--ckpt-every", type=int, default=50, help="baseline: U-Net checkpoint every N steps")
    parser.add_argument("--train-only", action="store_true", help="baseline: train, do not evaluate")
    parser.add_argument("--unet-ckpt", default=None, help="baseline: evaluate this U-Net checkpoint instead of training one")
    parser.add_argument("--scratch", nargs="*", default=[], help="baseline: checkpoints of a conditional PRDiT trained from "
                        "scratch with --config beside the U-Net (prdit train ... --from_scratch), e.g. at equal time and equal steps")
    parser.add_argument("--no-unet", action="store_true", help="baseline: leave the U-Net out (compare --scratch only)")
    parser.add_argument("--no-shipped", action="store_true", help="baseline: leave the shipped model out")
    parser.add_argument("--merge", nargs="+", metavar="NAME", help="baseline: join the contenders of earlier runs' "
                        "conditional_<NAME>_baseline.json (same masks and sampler) into conditional_<--name>_baseline.json")
    parser.add_argument("--weights", nargs="+", choices=["ema", "model"], default=["ema"],
                        help="baseline: the EMA and/or the raw weights of the U-Net and --scratch (the shipped model: EMA)")
    parser.add_argument("--scratch-cpu-seconds", type=float, nargs="*", default=[], help="baseline: the CPU seconds each "
                        "--scratch checkpoint's training used (measured outside, e.g. from /proc; recorded as given)")
    parser.add_argument("--name", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    if args.part == "baseline":
        from prdit.config import load_config

        config = load_config(args.config, args.set)
        if args.merge:
            merge_baselines(args.merge, args.name)
            return
        unet = Path(args.unet_ckpt) if args.unet_ckpt else None
        if unet is None and not args.no_unet:
            unet = train_baseline(config, args.minutes, Path(args.baseline_dir), args.ckpt_every)
        if not args.train_only:
            baseline_results(args, config, unet, started)
        return

    ckpt = args.ckpt or str(pretrained_weights("phantom-mask"))
    pipeline = load_pipeline(ckpt, device="cpu")
    unconditional = load_pipeline(pretrained_weights("phantom"), device="cpu")
    real, masks, spacing = held_out(args.masks, pipeline.input_size)
    from prdit.conditioning import DEFAULT_GUIDANCE_SCALE

    default_w = DEFAULT_GUIDANCE_SCALE if args.default_guidance is None else args.default_guidance
    result: dict = {**protocol(args, real, masks, spacing), "checkpoint": ckpt, "default_guidance": default_w}
    uncond = draw(unconditional, args.masks, 0, args.steps)
    result["unconditional_shipped"] = {"dice": dice_scores(uncond, masks), **realism(real, uncond, spacing)}
    result["diversity_reference"]["unconditional_shipped"] = ms_ssim_diversity(FEATURE_INPUT.to_model(uncond))["mean"]
    by_guidance: dict = {}
    generated: dict[float, np.ndarray] = {}
    for w in args.guidance if args.part != "attributes" else []:
        by_guidance[str(w)], generated[w] = measure(pipeline, real, masks, spacing, w, args)
    if by_guidance:
        result["by_guidance"] = by_guidance
    if args.part != "guidance":
        attribute_results(args, pipeline, masks, real, uncond, default_w, result)
    result["minutes"] = round((time.time() - started) / 60, 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"conditional_{args.name}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if generated:
        rows = [(f"w = {w:g}" + (" (no condition)" if w == 0 else ""), generated[w]) for w in args.guidance]
        picture(RESULTS / f"conditional_{args.name}.png", masks, real, rows + [("unconditional model", uncond)],
                f"{Path(ckpt).name}: held-out masks, {args.steps} ian-2m steps")
    print(json.dumps({k: v for k, v in result.items() if k in ("diversity_ms_ssim", "attribute_sweep", "minutes")}, indent=1))
    print(f"wrote {out}")


def held_out(count: int, size: int, first: int = HELD_OUT_SEED) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``count`` phantoms the training never saw (HU), their label maps, and the voxel spacing."""
    phantoms = [generate_phantom(size, first + i, return_labels=True) for i in range(count)]
    masks = np.stack([phantom_label_map(t) for _, _, t in phantoms])
    return np.stack([v for v, _, _ in phantoms]), masks, tuple(float(v) for v in phantoms[0][1])  # type: ignore[return-value]


def protocol(args, real: np.ndarray, masks: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """What every result of this benchmark shares: the masks, the sampler, the ceiling and the real-vs-real floor
    (a second set of held-out phantoms against the first: what a perfect generator scores on W1 / FID / MMD)."""
    second, _, _ = held_out(len(real), real.shape[1], HELD_OUT_SEED + 1000)
    floor = realism(real, second, spacing)
    return {"masks": len(masks), "held_out_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + len(masks) - 1], "sampler": "ian-2m",
            "steps": args.steps, "features": "FID/MMD on MedicalNet ResNet-50 features, deterministic random-init network "
            "(prdit.evaluation's offline fallback; MedicalNet's weights are not downloadable here): comparable between "
            "rows of this file, not to published numbers",
            "ceiling_real_phantoms": {"dice": dice_scores(real, masks)},
            "floor_real_vs_real": {k: floor[k] for k in ("hu_w1", "fid", "mmd")},
            "diversity_reference": {"real": ms_ssim_diversity(FEATURE_INPUT.to_model(real))["mean"]}}


def measure(pipeline, real: np.ndarray, masks: np.ndarray, spacing, w: float, args) -> tuple[dict, np.ndarray]:
    """One volume per held-out mask at guidance ``w``: Dice, realism and same-mask diversity (and the volumes)."""
    volumes = np.stack([draw(pipeline, 1, i, args.steps, mask=masks[i], guidance_scale=w)[0] for i in range(len(masks))])
    found = {"dice": dice_scores(volumes, masks), **realism(real, volumes, spacing),
             "diversity_ms_ssim_same_mask": same_mask_diversity(pipeline, masks, args.diversity_samples, args.steps, w)}
    print(f"{pipeline.model.name} guidance {w}: " + ", ".join(f"{t} {v['mean']:.3f}" for t, v in found["dice"].items())
          + f"; W1 {found['hu_w1']:.1f} HU, FID {found['fid']:.4g}, MS-SSIM {found['diversity_ms_ssim_same_mask']:.3f}", flush=True)
    return found, volumes


def attribute_results(args, pipeline, masks: np.ndarray, real: np.ndarray, uncond: np.ndarray, default_w: float, result: dict) -> None:
    """Diversity between samples of one mask, and the body-diameter sweep (into ``result``)."""
    measured_w = result.get("by_guidance", {}).get(str(default_w), {}).get("diversity_ms_ssim_same_mask")
    same = measured_w if measured_w is not None else same_mask_diversity(pipeline, masks, args.diversity_samples, args.steps, default_w)
    result["diversity_ms_ssim"] = {"same_mask": same, "unconditional": ms_ssim_diversity(FEATURE_INPUT.to_model(uncond))["mean"],
                                   "real": ms_ssim_diversity(FEATURE_INPUT.to_model(real))["mean"]}

    requested, measured = [], []
    for j, diameter in enumerate(args.sweep):
        volumes = draw(pipeline, args.sweep_samples, 1000 + 10 * j, args.steps, attributes={"body_diameter_mm": diameter},
                       guidance_scale=default_w)
        for hu in volumes:
            requested.append(diameter)
            measured.append(effective_diameter_mm(body_and_lung_masks(hu)[0], pipeline.spacing))
    means = [float(np.mean([m for r, m in zip(requested, measured) if r == d])) for d in args.sweep]
    result["attribute_sweep"] = {
        "attribute": "body_diameter_mm", "requested": args.sweep, "measured_mean": means,
        "correlation_of_means": float(np.corrcoef(args.sweep, means)[0, 1]) if len(args.sweep) > 1 else None,
        "correlation_per_sample": float(np.corrcoef(requested, measured)[0, 1]) if len(requested) > 1 else None,
        "training_range": "263-299 mm (held-out phantoms)",
    }


if __name__ == "__main__":
    main()
