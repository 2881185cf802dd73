#!/usr/bin/env python
"""Continued pre-training of a Mistral-family model on Russian data with CE + λ·KL.

    torchrun --nproc_per_node=K pretrain_vikhr.py --config configs/tiny-cpu.yaml [section.key=value ...]
    python pretrain_vikhr.py --config configs/mistral-7b-v0.2.yaml --dry-run --gpus 8

The loop itself is `vikhr.train.pretrain.run` (read it top to bottom); `vikhr pretrain` runs the
same code in one process.
"""

import sys

from vikhr.errors import VikhrError
from vikhr.train.pretrain import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except VikhrError as e:
        print(f"pretrain_vikhr.py: error: {e}", file=sys.stderr)
        sys.exit(2)
