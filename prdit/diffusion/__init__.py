"""prdit.diffusion"""
