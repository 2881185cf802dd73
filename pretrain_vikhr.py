#!/usr/bin/env python
"""Continued pre-training (and SFT) of a Mistral, Llama or Qwen model on megatron-core, Megatron-style entry.

    torchrun --nproc_per_node=K pretrain_vikhr.py --config configs/tiny-cpu.yaml [section.key=value ...]
    python pretrain_vikhr.py --config configs/mistral-7b-v0.2.yaml --dry-run --gpus 8

The loop itself is `vikhr.train.trainer` (read it top to bottom); `vikhr pretrain` and
`vikhr sft train` run the same code in one process.
"""

import signal
import sys

from vikhr.errors import ENDINGS, report_ending
from vikhr.train.cli import main

if __name__ == "__main__":
    try:
        status = main()
    except ENDINGS as e:  # as `vikhr pretrain` reports them; Ctrl-C: torchrun passes it on to every rank
        status = report_ending("pretrain_vikhr.py", e)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ended and said so (see vikhr.cli.run)
    sys.exit(status)
