"""Instruction tuning: chat templates with an assistant-only loss mask, and SFT dataset preparation.

    vikhr sft prepare --input chats.jsonl --tokenizer tok.model --output-prefix data/sft/chat
    vikhr sft train --config configs/sft-tiny-cpu.yaml

Training is the trainer (`vikhr.train.trainer`) with `data.kind: sft`; the packed stream lives
in `vikhr.sft.data`. See docs/sft.md.
"""
