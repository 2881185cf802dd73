"""Load a converted vikhr checkpoint into megatron (TP = world size) and compare logits with HF.

Usage: convert_logits.py HF_DIR MEGATRON_DIR OUT.json
Writes the max |logit difference| over the real vocabulary (rank 0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    hf_dir, meg_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    from vikhr.model import ModelConfig, build_gpt_model
    from vikhr.runtime.distributed import distributed_env
    from vikhr.train.checkpoint import load_model, read_meta

    meta = read_meta(meg_dir)
    with distributed_env(tp_size=meta["tp"], seed=0, device="cpu") as env:
        cfg = ModelConfig(**meta["model"])
        model = build_gpt_model(cfg, tp_size=env.tp_size)
        load_model(model, meg_dir, env.tp_rank, env.tp_size)
        model.eval()
        tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(5))
        pos = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
        with torch.no_grad():
            local = model(tokens, pos, attention_mask=None)  # [b, s, V_pad/TP]
            parts = [torch.empty_like(local) for _ in range(env.tp_size)]
            from megatron.core import parallel_state

            dist.all_gather(parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            logits = torch.cat(parts, dim=-1)[..., : cfg.vocab_size]
        if env.rank == 0:
            hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
            hf.eval()
            with torch.no_grad():
                ref = hf(tokens).logits
            out.write_text(
                json.dumps({"max_abs_diff": float((logits - ref).abs().max()), "shape": list(ref.shape)})
            )


if __name__ == "__main__":
    main()
