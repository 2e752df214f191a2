"""Seed-compatible entry point: ``python sample.py --config X.yaml --ckpt C [--new] [--num-samples N] [--total-samples M]
[--output-dir D]``; ``--num-samples`` is the number of volumes per forward pass, ``--total-samples`` the total.

Also under torchrun (ranks take disjoint seeds). Same options as ``prdit sample``.
"""

import sys

from prdit.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
