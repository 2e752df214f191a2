"""prdit.models: the PRDiT network and its named registry.

>>> from prdit.models import create_model
>>> model = create_model("PRDiT-B/12/4", input_size=128)   # 93,228,992 parameters
>>> out = model(x, t)            # x [B, 1, 128, 128, 128], t [B] in 0..1000 -> [B, 2, 128, 128, 128]
"""

from prdit.models.condition import Condition, GuidedModel
from prdit.models.global_dit import GlobalDiT, position_code
from prdit.models.local_denoiser import LocalDenoiser
from prdit.models.prdit import PRDiT, TimestepEmbedder
from prdit.models.registry import SIZES, ModelSpec, create_model, list_models, parse_model_name
from prdit.models.tokens import extract_tokens, tile_tokens, token_grid

__all__ = [
    "PRDiT",
    "Condition",
    "GuidedModel",
    "LocalDenoiser",
    "GlobalDiT",
    "TimestepEmbedder",
    "ModelSpec",
    "SIZES",
    "create_model",
    "list_models",
    "parse_model_name",
    "position_code",
    "extract_tokens",
    "tile_tokens",
    "token_grid",
]
