"""MedicalNet 3D ResNet-50 feature extractor (Chen et al. 2019, "Med3D"), the network behind 3D FID and MMD.

The architecture reproduces Tencent/MedicalNet ``models/resnet.py`` exactly, so the released
``resnet_50.pth`` / ``resnet_50_23dataset.pth`` files load key for key: conv1 7^3 stride 2 padding 3 (no bias),
BN, ReLU, max-pool 3/2/1, bottleneck layers [3, 4, 6, 3] of widths 64/128/256/512 (expansion 4), shortcut type B
(1x1x1 conv without bias + BN), layer2 stride 2, layer3 stride 1 dilation 2, layer4 stride 1 dilation 4. The
features are the 2048-d global average pool of layer4.

Why not ``monai.networks.nets.resnet50``: checked against MONAI 1.6.1, it builds layer3 and layer4 with stride 2
and no dilation (so a 128^3 input reaches layer4 at 4^3 instead of 16^3: different features), its default
shortcut conv carries a bias (``bias_downsample=True``) and its bottleneck has no dilation argument. The state-dict
key names coincide (conv1, bn1, layerN.i.convK/bnK, downsample.0/1), but the function does not, so this module is
our own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from prdit.errors import CheckpointError
from prdit.io import sha256_file

FEATURE_DIM = 2048
FALLBACK_SEED = 0
FALLBACK_LABEL = f"random-init fallback (seed {FALLBACK_SEED}) — not comparable to published numbers"
# The released MedicalNet files carry a segmentation head that feature extraction does not use.
_HEAD_PREFIX = "conv_seg."


class Bottleneck(nn.Module):
    """1x1x1 -> 3x3x3 (stride, dilation) -> 1x1x1 bottleneck with a residual connection (MedicalNet layout)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, dilation=dilation, padding=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class MedicalNetResNet50(nn.Module):
    """The MedicalNet ResNet-50 backbone: [B, 1, D, H, W] -> layer4 feature map [B, 2048, D/8, H/8, W/8]."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], dilation=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=4)
        # MedicalNet's initialisation, which is also what the fixed-seed fallback uses.
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * Bottleneck.expansion:  # shortcut type B
            downsample = nn.Sequential(
                nn.Conv3d(self.in_planes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.in_planes, planes, stride, dilation, downsample)]
        self.in_planes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.in_planes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_medicalnet_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an original MedicalNet file (``{"state_dict": {"module.conv1.weight": ...}}``) as backbone keys.

    Loaded with ``weights_only=True``; the ``module.`` prefix of DataParallel is stripped and the segmentation
    head (``conv_seg.*``) is dropped. A bare state dict (no ``state_dict`` wrapper, no prefix) is accepted too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: MedicalNet weights not found; pass the path of resnet_50_23dataset.pth or resnet_50.pth")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or pickled-object files
        raise CheckpointError(f"{path}: cannot read as MedicalNet weights ({type(error).__name__}: {error})") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict with a 'state_dict' of tensors (the MedicalNet release format)")
    stripped = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return {k: v for k, v in stripped.items() if not k.startswith(_HEAD_PREFIX)}


def _load_backbone(backbone: MedicalNetResNet50, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load of every backbone key; only BN ``num_batches_tracked`` (absent from pre-0.4 files) may be missing."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"{len(missing)} missing (first: {missing[:1]}), {len(unexpected)} unexpected (first: {unexpected[:1]})"
        raise CheckpointError(f"{path}: not a MedicalNet ResNet-50 state dict: {detail}; is it the ResNet-50 file?")
    wrong = [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
    backbone.load_state_dict({**expected, **state}, strict=True)


class MedicalNetFeatures(nn.Module):
    """[B, 1, D, H, W] volumes (model space [-1, 1]) -> [B, 2048] MedicalNet ResNet-50 features.

    ``pretrain_path``: an original MedicalNet ResNet-50 file. Without it the network is the deterministic
    fallback: MedicalNet's initialisation drawn under ``torch.manual_seed(0)`` on the CPU generator (in a forked
    RNG, so the caller's random state is untouched), identical on every machine but *not* comparable to numbers
    computed with the released weights; :attr:`weights` says which one is in use.
    ``normalization="zscore"`` standardises each volume to zero mean, unit variance (MedicalNet's input
    convention, over the whole volume: MedicalNet's random background fill is left out to stay deterministic).
    Always in eval mode (BatchNorm uses its running statistics).
    """

    def __init__(self, pretrain_path: str | os.PathLike | None = None, normalization: Literal["none", "zscore"] = "none"):
        super().__init__()
        if normalization not in ("none", "zscore"):
            raise ValueError(f"normalization must be 'none' or 'zscore', got {normalization!r}")
        self.normalization = normalization
        state = load_medicalnet_state_dict(pretrain_path) if pretrain_path is not None else None  # fail before building
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FALLBACK_SEED)
            self.backbone = MedicalNetResNet50()
        if state is None or pretrain_path is None:
            self.weights = FALLBACK_LABEL
            self.weights_sha256: str | None = None
        else:
            path = Path(pretrain_path)
            _load_backbone(self.backbone, state, path)
            self.weights_sha256 = sha256_file(path)
            self.weights = f"{path.name} sha256:{self.weights_sha256}"
        self.eval()

    def train(self, mode: bool = True) -> "MedicalNetFeatures":
        # A feature extractor for metrics must never update BatchNorm statistics.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected volumes [B, 1, D, H, W], got shape {tuple(x.shape)}")
        if self.normalization == "zscore":
            dims = (1, 2, 3, 4)
            x = (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-6)
        return self.backbone(x).mean(dim=(2, 3, 4))


@torch.no_grad()
def extract_features(
    extractor: MedicalNetFeatures,
    volumes: np.ndarray,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Features [N, 2048] (float64) of model-space volumes [N, D, H, W], computed in batches without gradients."""
    from tqdm.auto import tqdm

    extractor = extractor.to(device)
    batches = range(0, len(volumes), batch_size)
    outputs = []
    for start in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        batch = torch.as_tensor(np.ascontiguousarray(volumes[start : start + batch_size]), dtype=torch.float32, device=device)
        outputs.append(extractor(batch.unsqueeze(1)).double().cpu().numpy())
    return np.concatenate(outputs)
