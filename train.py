"""Seed-compatible entry point: ``python train.py --config X.yaml [--resume_training] [--debug] [--from_scratch]``.

Also under torchrun: ``torchrun --nproc_per_node=N train.py --config X.yaml``. Same options as ``prdit train``.
"""

import sys

from prdit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
