"""PRDiT: Pixel-Level Residual Diffusion Transformer for 3D CT volume generation."""

__version__ = "0.1.0"
