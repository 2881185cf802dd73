"""`vikhr demo` runs every stage of the pipeline on the bundled sample and reports sane numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path


def test_demo_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vikhr",
            "demo",
            "--workdir",
            str(work),
            "--base-steps",
            "12",
            "--steps",
            "12",
            "--sft-steps",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 9):
        assert f"[{n}/8]" in proc.stdout
    summary = json.loads((work / "summary.json").read_text())
    cpt = summary["chars_per_token"]
    # The Russian tokenizer packs more Russian characters into a token than Mistral's.
    assert cpt["vikhr/ru"] > 1.3 * cpt["mistral/ru"]
    bpc = summary["bits_per_char"]
    assert all(math.isfinite(v) and v > 0 for m in bpc.values() for v in m.values())
    # Continued pre-training lowers held-out Russian bits per character of the adapted model.
    assert bpc["adapted + continued"]["ru"] < bpc["adapted, before training"]["ru"]
    assert summary["vocab"]["adapted_model"] == summary["vocab"]["new"]
    # Instruction tuning lowers the assistant-token loss on held-out chats; the tuned model answers.
    assert summary["sft_valid_loss"]["after"] < summary["sft_valid_loss"]["before"]
    assert isinstance(summary["sft_answer"]["answer"], str)
    assert (work / "data" / "chats_mask_document.idx").is_file()
    # Every stage left its artefacts: report, tokenizer export, datasets, checkpoints, HF models.
    assert (work / "report" / "chars_per_token.png").is_file()
    assert any((work / "tokenizer").glob("tokenizer.json"))
    assert (work / "data" / "vikhr-ru_text_document.idx").is_file()
    assert (work / "continued" / "latest").is_file()
    assert (work / "continued" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((work / "continued" / "tensorboard").iterdir())
    for hf in ("base-hf", "adapted-hf", "vikhr-hf", "vikhr-instruct-hf"):
        assert (work / hf / "config.json").is_file()
        assert (work / hf / "tokenizer_config.json").is_file()
    # Every export is self-contained: transformers loads its tokenizer from the directory alone,
    # and the instruct export carries the chat template it was tuned with.
    from transformers import AutoTokenizer

    instruct = AutoTokenizer.from_pretrained(str(work / "vikhr-instruct-hf"))
    assert instruct.chat_template
    assert instruct.eos_token == "</s>"
