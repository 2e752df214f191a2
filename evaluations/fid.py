"""FID between real and generated volumes on MedicalNet ResNet-50 features (same as `prdit evaluate fid`).

python evaluations/fid.py --dataset LIDC-IDRI --img_size 128 --data_root_real REAL/ --data_root_fake FAKE/ \
    --pretrain_path resnet_50_23dataset.pth
"""

import sys

from prdit.cli.evaluate import script_main

if __name__ == "__main__":
    sys.exit(script_main("fid"))
