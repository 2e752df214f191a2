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
import json
import time
from pathlib import Path

import numpy as np
import torch

from prdit.data.conditions import PHANTOM_LABELS, effective_diameter_mm
from prdit.data.phantom import generate_phantom, phantom_label_map
from prdit.evaluation.anatomy import body_and_lung_masks
from prdit.evaluation.data import FEATURE_INPUT
from prdit.evaluation.metrics import ms_ssim_diversity
from prdit.evaluation.offline import offline_metrics
from prdit.io import atomic_write_text
from prdit.sample import load_pipeline, pretrained_weights

RESULTS = Path(__file__).parent / "results"
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


def realism(real: np.ndarray, fake: np.ndarray) -> dict:
    metrics = offline_metrics(real, fake)
    fractions = metrics["tissue_fractions"]
    return {"hu_w1": metrics["hu_histogram"]["wasserstein_hu"],
            "tissue_fractions": {name: {"fake": v["fake_mean"], "real": v["real_mean"]} for name, v in fractions.items()}}


def draw(pipeline, count: int, seed: int, steps: int, **condition) -> np.ndarray:
    return pipeline.sample(count, steps=steps, seed=seed, batch_size=count, progress=False, **condition)[:, 0].numpy()


def picture(path: Path, masks: np.ndarray, real: np.ndarray, rows: list[tuple[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(3, len(masks))
    columns = [("real phantom", real)] + rows
    figure, axes = plt.subplots(2 * shown, len(columns), figsize=(2.3 * len(columns), 4.6 * shown), squeeze=False)
    for i in range(shown):
        wanted = condition_tissues(masks[i])
        for j, (title, volumes) in enumerate(columns):
            for k, (view, cut) in enumerate((("axial", np.s_[volumes.shape[1] // 2]), ("coronal", np.s_[:, :, volumes.shape[2] // 2]))):
                axis = axes[2 * i + k, j]
                image = volumes[i][cut] if view == "axial" else volumes[i][:, volumes.shape[2] // 2][::-1]
                axis.imshow(image, cmap="gray", vmin=-1000, vmax=600, interpolation="nearest")
                for tissue, colour in (("body", "yellow"), ("lung", "cyan"), ("bone", "red")):
                    mask = wanted[tissue][cut] if view == "axial" else wanted[tissue][:, volumes.shape[2] // 2][::-1]
                    if mask.any() and not mask.all():
                        axis.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=0.7)
                axis.set_xticks([])
                axis.set_yticks([])
                if i == 0 and k == 0:
                    axis.set_title(title, fontsize=8)
                if j == 0:
                    axis.set_ylabel(f"mask {i} {view}", fontsize=8)
    figure.suptitle("condition contours (yellow body, cyan lung, red bone) over generated slices", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
    parser.add_argument("--part", choices=["all", "guidance", "attributes"], default="all",
                        help="guidance: Dice and realism per guidance scale (and the picture); attributes: diversity and the "
                        "attribute sweep; all: both (run the two parts as two processes to use two cores)")
    parser.add_argument("--name", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()

    ckpt = args.ckpt or str(pretrained_weights("phantom-mask"))
    pipeline = load_pipeline(ckpt, device="cpu")
    unconditional = load_pipeline(pretrained_weights("phantom"), device="cpu")
    size = pipeline.input_size
    phantoms = [generate_phantom(size, HELD_OUT_SEED + i, return_labels=True) for i in range(args.masks)]
    real = np.stack([v for v, _, _ in phantoms])
    masks = np.stack([phantom_label_map(t) for _, _, t in phantoms])
    from prdit.conditioning import DEFAULT_GUIDANCE_SCALE

    default_w = DEFAULT_GUIDANCE_SCALE if args.default_guidance is None else args.default_guidance
    result: dict = {"checkpoint": ckpt, "masks": args.masks, "held_out_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + args.masks - 1],
                    "sampler": "ian-2m", "steps": args.steps, "default_guidance": default_w,
                    "ceiling_real_phantoms": {"dice": dice_scores(real, masks)}}

    uncond = draw(unconditional, args.masks, 0, args.steps)
    result["unconditional_shipped"] = {"dice": dice_scores(uncond, masks), **realism(real, uncond)}
    by_guidance: dict = {}
    generated: dict[float, np.ndarray] = {}
    for w in args.guidance if args.part != "attributes" else []:
        volumes = np.stack([draw(pipeline, 1, i, args.steps, mask=masks[i], guidance_scale=w)[0] for i in range(args.masks)])
        generated[w] = volumes
        by_guidance[str(w)] = {"dice": dice_scores(volumes, masks), **realism(real, volumes)}
        print(f"guidance {w}: {json.dumps(by_guidance[str(w)]['dice'])}  W1 {by_guidance[str(w)]['hu_w1']:.1f} HU", flush=True)
    if by_guidance:
        result["by_guidance"] = by_guidance
    if args.part != "guidance":
        attribute_results(args, pipeline, masks, real, uncond, default_w, result)
    result["minutes"] = round((time.time() - started) / 60, 1)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"conditional_{args.name}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if generated:
        rows = [(f"w = {w:g}", generated[w]) for w in args.guidance] + [("unconditional", uncond)]
        picture(RESULTS / f"conditional_{args.name}.png", masks, real, rows)
    print(json.dumps({k: v for k, v in result.items() if k in ("diversity_ms_ssim", "attribute_sweep", "minutes")}, indent=1))
    print(f"wrote {out}")


def attribute_results(args, pipeline, masks: np.ndarray, real: np.ndarray, uncond: np.ndarray, default_w: float, result: dict) -> None:
    """Diversity between samples of one mask, and the body-diameter sweep (into ``result``)."""
    diversity = []
    for i in range(min(2, args.masks)):
        samples = draw(pipeline, args.diversity_samples, 100 + 10 * i, args.steps, mask=masks[i], guidance_scale=default_w)
        diversity.append(ms_ssim_diversity(FEATURE_INPUT.to_model(samples))["mean"])
    result["diversity_ms_ssim"] = {"same_mask": float(np.mean(diversity)), "unconditional": ms_ssim_diversity(FEATURE_INPUT.to_model(uncond))["mean"],
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
