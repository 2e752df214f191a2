"""Named PRDiT models: ``PRDiT-{size}/{patch}/{depth}``, e.g. ``PRDiT-B/12/4`` (alias ``DiT-B/12/4``).

``size`` sets the DiT width and heads (and the width of the shared time MLP), ``patch`` the input window
P (standard P in {10, 12, 14, 16} with stride 8), ``depth`` the number of DiT blocks (0 = stage 1, the local
denoiser alone). Reference parameter counts (one input channel, two heads) of the paper's code, which
these names reproduce exactly: B/12/0 39,156,160; B/12/4 93,228,992; B/12/12 178,255,808;
XL/12/0 39,918,400; XL/12/4 155,974,208; S/12/4 53,781,824; XS/12/4 42,795,008.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from prdit.errors import ConfigError
from prdit.models.prdit import PRDiT

# size -> (hidden size, attention heads). XS..XL are the paper's. "T" (tiny) is ours, not the paper's: a
# CPU-only size for phantom demos and tests on a laptop (use it with P = 6, stride = 4 at 32-64^3).
SIZES: dict[str, tuple[int, int]] = {
    "T": (128, 4),
    "XS": (192, 6),
    "S": (384, 6),
    "B": (768, 12),
    "L": (1024, 16),
    "XL": (1152, 16),
}
STANDARD_PATCHES = (10, 12, 14, 16)
STANDARD_STRIDE = 8
LISTED_DEPTHS = (0, 4, 12)  # the names list_models() offers; any depth >= 0 is accepted
OPTIONS = ("stride", "grad_checkpoint", "init_gain", "label_channels", "attributes")

_NAME = re.compile(r"^(?:PR)?DiT-([A-Za-z]+)/(\d+)/(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name."""

    size: str
    patch: int
    depth: int

    @property
    def name(self) -> str:
        return f"PRDiT-{self.size}/{self.patch}/{self.depth}"

    @property
    def hidden_size(self) -> int:
        return SIZES[self.size][0]

    @property
    def num_heads(self) -> int:
        return SIZES[self.size][1]


def list_models() -> list[str]:
    """The standard names: every size, standard patch and depth in (0, 4, 12)."""
    return [f"PRDiT-{s}/{p}/{d}" for s in SIZES for p in STANDARD_PATCHES for d in LISTED_DEPTHS]


def _unknown(name: str, why: str) -> ConfigError:
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"closest valid names: {', '.join(close)}" if close else "for example PRDiT-B/12/4"
    return ConfigError(
        f"unknown model name {name!r} ({why}); names are PRDiT-{{{','.join(SIZES)}}}/{{patch}}/{{depth}}; {hint}"
    )


def parse_model_name(name: str) -> ModelSpec:
    """``"PRDiT-B/12/4"`` (or ``"DiT-B/12/4"``, any case) -> ``ModelSpec("B", 12, 4)``."""
    match = _NAME.match(name.strip()) if isinstance(name, str) else None
    if match is None:
        raise _unknown(str(name), "not of the form PRDiT-<size>/<patch>/<depth>")
    size, patch, depth = match.group(1).upper(), int(match.group(2)), int(match.group(3))
    if size not in SIZES:
        close = difflib.get_close_matches(size, list(SIZES), n=1, cutoff=0.3)
        raise ConfigError(
            f"unknown model name {name!r} (no size {size!r}; sizes are {', '.join(SIZES)}); "
            f"did you mean PRDiT-{close[0] if close else 'B'}/{patch}/{depth}?"
        )
    if patch < 1:
        raise _unknown(name, "the patch must be >= 1")
    return ModelSpec(size, patch, depth)


def create_model(
    name: str, input_size: int, in_channels: int = 1, out_channels: int = 2, **options: Any
) -> PRDiT:
    """Build a named PRDiT for volumes of ``input_size``^3 (it also runs on other multiples of the stride).

    Options: ``stride`` (default 8 for the standard patches 10/12/14/16; required for any other patch,
    e.g. ``PRDiT-T/6/4`` with ``stride=4``), ``grad_checkpoint`` (activation checkpointing per DiT block
    and per local MLP branch: less memory, about one extra forward pass of compute) and ``init_gain`` (xavier
    gain of the global DiT's linear layers; default 0.1, the paper's stage-2 initialisation), ``label_channels`` and
    ``attributes`` (a conditional model: one-hot label channels and scalar attributes, see
    :mod:`prdit.models.condition`; default 0, unconditional).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)} for {name}; valid: {', '.join(OPTIONS)}")
    spec = parse_model_name(name)
    stride = options.get("stride")
    if stride is None:
        if spec.patch not in STANDARD_PATCHES:
            raise ConfigError(
                f"{spec.name}: patch {spec.patch} is not a standard patch {STANDARD_PATCHES}, so set the model "
                f"stride explicitly (patch - stride must be even, e.g. patch 6 with stride 4)"
            )
        stride = STANDARD_STRIDE
    return PRDiT(
        input_size=input_size,
        patch_size=spec.patch,
        stride=int(stride),
        depth=spec.depth,
        hidden_size=spec.hidden_size,
        num_heads=spec.num_heads,
        in_channels=in_channels,
        out_channels=out_channels,
        grad_checkpoint=bool(options.get("grad_checkpoint", False)),
        name=spec.name,
        init_gain=float(options.get("init_gain", 0.1)),
        label_channels=int(options.get("label_channels", 0)),
        attributes=int(options.get("attributes", 0)),
    )
