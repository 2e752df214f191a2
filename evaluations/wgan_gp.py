"""Wasserstein distance from WGAN-GP critics, real vs two generated sets (same as `prdit evaluate wgan`).

train:    python evaluations/wgan_gp.py --seed 0 --save_path critics/ --batch_size 8 --img_size 128 --gpu_id 0 \
              --dataset LIDC-IDRI --data_root_real REAL/ --data_root_fake_0 FAKE0/ --data_root_fake_1 FAKE1/ \
              --train_size 400 --val_size 100
evaluate: the same command with --eval (prints and writes critics/wgan_eval.json)
"""

import sys

from prdit.cli.evaluate import script_main

if __name__ == "__main__":
    sys.exit(script_main("wgan"))
