"""Load converted vikhr checkpoints into megatron (TP = world size) and compare logits with HF.

Usage: convert_logits.py OUT.json HF_DIR MEGATRON_DIR [HF_DIR MEGATRON_DIR ...]
Writes, per HF directory (rank 0), the max |logit difference| over the real vocabulary; one launch
checks several model families.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def max_logit_difference(hf_dir: Path, meg_dir: Path, env: Any) -> dict[str, Any] | None:
    from megatron.core import parallel_state
    from transformers import AutoModelForCausalLM

    from vikhr.model import ModelConfig, build_gpt_model
    from vikhr.train.checkpoint import load_model, read_meta

    meta = read_meta(meg_dir)
    assert meta["tp"] == env.tp_size, (meg_dir, meta["tp"], env.tp_size)
    cfg = ModelConfig(**meta["model"])
    model = build_gpt_model(cfg, tp_size=env.tp_size)
    load_model(model, meg_dir, env.tp_rank, env.tp_size)
    model.eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    with torch.no_grad():
        local = model(tokens, pos, attention_mask=None)  # [b, s, V_pad/TP]
        parts = [torch.empty_like(local) for _ in range(env.tp_size)]
        dist.all_gather(parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)[..., : cfg.vocab_size]
    if env.rank != 0:
        return None
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        ref = hf(tokens).logits
    return {"max_abs_diff": float((logits - ref).abs().max()), "shape": list(ref.shape)}


def main() -> None:
    out, dirs = Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]
    torch.set_num_threads(1)
    from vikhr.runtime.distributed import distributed_env

    # Every checkpoint of one launch is split over all its ranks.
    tp_size = int(os.environ.get("WORLD_SIZE", "1"))
    with distributed_env(tp_size=tp_size, seed=0, device="cpu") as env:
        pairs = zip(dirs[::2], dirs[1::2], strict=True)
        results = {str(hf): max_logit_difference(hf, meg, env) for hf, meg in pairs}
        if env.rank == 0:
            out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
