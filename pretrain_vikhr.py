#!/usr/bin/env python
"""Continued pre-training (and SFT) of a Mistral, Llama or Qwen model on megatron-core, Megatron-style entry.

    torchrun --nproc_per_node=K pretrain_vikhr.py --config configs/tiny-cpu.yaml [section.key=value ...]
    python pretrain_vikhr.py --config configs/mistral-7b-v0.2.yaml --dry-run --gpus 8

The loop itself is `vikhr.train.trainer` (read it top to bottom); `vikhr pretrain` and
`vikhr sft train` run the same code in one process.
"""

import sys

from vikhr.errors import (
    BROKEN_PIPE_STATUS,
    RunStopped,
    VikhrError,
    os_error_line,
    print_error_line,
    print_stop_line,
    stdout_closed,
)
from vikhr.train.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except VikhrError as e:
        print_error_line(f"pretrain_vikhr.py: error: {e}")
        sys.exit(2)
    except OSError as e:  # as `vikhr pretrain` reports it: a read-only place, a full disk
        if isinstance(e, BrokenPipeError) and stdout_closed():
            sys.exit(BROKEN_PIPE_STATUS)
        print_error_line(f"pretrain_vikhr.py: error: {os_error_line(e)}")
        sys.exit(2)
    except RunStopped as e:  # saved and stopped on a cluster's notice or at its time limit
        sys.exit(print_stop_line("pretrain_vikhr.py", e))
    except KeyboardInterrupt:  # Ctrl-C (torchrun passes it on to every rank)
        print_error_line("pretrain_vikhr.py: interrupted")
        sys.exit(130)
