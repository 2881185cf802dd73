"""`vikhr convert`: HF <-> Megatron checkpoints (Mistral/Llama layout, tensor-parallel resharding)."""

from __future__ import annotations

import argparse

from vikhr.progress_bar import add_no_progress


def _hf_to_megatron(args: argparse.Namespace) -> int:
    from vikhr.convert import hf_to_megatron

    out = hf_to_megatron(
        args.hf_dir, args.out, tp_size=args.tp, overwrite=args.overwrite, progress=args.progress
    )
    print(f"wrote {out} (tensor parallel {args.tp}); use it as model.init or kl.reference")
    return 0


def _megatron_to_hf(args: argparse.Namespace) -> int:
    from vikhr.convert import megatron_to_hf

    out = megatron_to_hf(
        args.checkpoint, args.out, overwrite=args.overwrite, tokenizer=args.tokenizer, progress=args.progress
    )
    if (out / "tokenizer_config.json").is_file():
        print(f"wrote {out} (loads with transformers AutoTokenizer and AutoModelForCausalLM)")
    else:
        print(
            f"wrote {out} without a tokenizer: the checkpoint records none that can be found (an SFT run "
            "records it through its datasets, any run through a model.init converted from an HF "
            "directory); pass --tokenizer PATH to include one"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert checkpoints between HF and Megatron (any tensor-parallel size)",
        description="Convert HF Mistral/Llama/Qwen2/Qwen3 safetensors checkpoints to vikhr's megatron-core "
        "checkpoints and back. Logits of the converted model match transformers'.",
    )
    conv = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = conv.add_parser("hf-to-megatron", help="HF directory -> vikhr checkpoint directory")
    a.add_argument("hf_dir", help="HF model directory (config.json + safetensors)")
    a.add_argument(
        "out", metavar="OUT_DIR", help="output checkpoint directory (must not exist unless --overwrite)"
    )
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel size to shard for (default 1)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_no_progress(a)
    a.set_defaults(func=_hf_to_megatron)
    b = conv.add_parser("megatron-to-hf", help="vikhr checkpoint (step dir or run dir) -> HF directory")
    b.add_argument("checkpoint", help="a checkpoint step directory, or a run directory with 'latest'")
    b.add_argument(
        "out", metavar="OUT_DIR", help="output HF model directory (must not exist unless --overwrite)"
    )
    b.add_argument(
        "--tokenizer",
        help="tokenizer to include (.model, tokenizer.json or a directory with one); "
        "default: the one the checkpoint records, if any",
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    add_no_progress(b)
    b.set_defaults(func=_megatron_to_hf)
