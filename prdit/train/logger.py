"""Run logging: JSON lines (always), TensorBoard (when installed), and the loss-curve picture."""

from __future__ import annotations

import json
import math
from pathlib import Path

from prdit.io import atomic_write_bytes, storage_error


class RunLogger:
    """Appends one JSON object per record to ``log.jsonl``; mirrors scalars to TensorBoard if available."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None) -> None:
        self.path = run_dir / "log.jsonl"
        self.enabled = enabled
        if enabled and resume_step is not None and self.path.exists():
            # an interrupted run logged past its last checkpoint: those steps are about to be redone
            kept = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is an optional extra
                self.writer = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a") as handle:
                handle.write(line)
        except OSError as error:  # a full disk is a one-line error, not a traceback
            raise storage_error(error, self.path, len(line)) or error from None
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(log_path: Path, out_png: Path, title: str = "") -> Path | None:
    """Training loss (and validation MSE when logged) against step, log scale."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_mse"]) for r in records if "val_mse" in r]
    if not train:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=120)
    axis.plot(*zip(*train), label="training loss", linewidth=1.2)
    if val:
        axis.plot(*zip(*val), "o-", label="validation MSE of x0_hat", markersize=3)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(out_png, buffer.getvalue())
    return out_png
