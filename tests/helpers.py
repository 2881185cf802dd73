"""Test helpers shared by several test files (imported as `from tests.helpers import ...`).

Tiny HF models take their shape from vikhr's presets through the converter's
`model_config_to_hf_config`, so that the tests and vikhr agree on what each family's config holds.
`FAMILIES` names tiny shapes of each family the converter knows.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.conftest import REPO, SHARED_DATA, child_env
from vikhr.convert.mistral import model_config_to_hf_config
from vikhr.model import preset

# family -> (HF architecture, ModelConfig fields over the "tiny" preset: hidden 64, 4 heads of 16).
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "mistral": ("mistral", {}),
    # theta 500k and llama3 scaling; an original context of 64 puts the 8 frequencies of a 16-wide
    # head in all three bands (kept, interpolated, divided by the factor).
    "llama3": (
        "llama",
        {
            "rope_theta": 500_000.0,
            "rope_scaling_factor": 8.0,
            "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0,
            "rope_original_max_seq_len": 64,
        },
    ),
    "qwen2": ("qwen2", {"qkv_bias": True, "tie_embeddings": True, "norm_eps": 1e-6, "rope_theta": 1e6}),
    # QK-norm, tied, and 4 heads of 32 on a 64-wide stream (as Qwen3-0.6B: 16 heads of 128 on 1024).
    "qwen3": (
        "qwen3",
        {"qk_norm": True, "tie_embeddings": True, "norm_eps": 1e-6, "rope_theta": 1e6, "kv_channels": 32},
    ),
    # 8 heads of 16 on a 64-wide residual stream: head_dim is not hidden / heads.
    "nemo": ("mistral", {"num_attention_heads": 8, "num_kv_heads": 2, "kv_channels": 16}),
}


def load_tool(name: str) -> Any:
    """tools/NAME.py imported as a module (nothing measured: the scripts work under `main()`), with
    tools/ on the import path as when the script runs (the scripts import bench_cli and each other
    from there)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "tools"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "tools"))
    return module


def tiny_hf_config(
    vocab_size: int, arch: str = "mistral", tied: bool = False, preset_name: str = "tiny", **overrides: Any
) -> Any:
    """A transformers config of the preset's shape (`overrides`: ModelConfig fields) as Mistral,
    Llama, Qwen2 (which has QKV biases) or Qwen3 (QK-norm)."""
    from transformers import AutoConfig

    if arch not in ("mistral", "llama", "qwen2", "qwen3"):
        raise ValueError(f"arch {arch!r}: mistral, llama, qwen2 or qwen3")
    if arch == "qwen2":
        overrides["qkv_bias"] = True
    if arch == "qwen3":
        overrides.update(qk_norm=True, sliding_window=None)
    if arch == "llama":
        overrides["sliding_window"] = None
    overrides["tie_embeddings"] = tied or overrides.get("tie_embeddings", False)
    shape = preset(preset_name, vocab_size=vocab_size, **overrides)
    return AutoConfig.for_model(**model_config_to_hf_config(shape, {"model_type": arch}))


def tiny_hf_model(
    path: Path,
    vocab_size: int,
    arch: str = "mistral",
    tied: bool = False,
    seed: int = 0,
    max_shard_size: str = "10GB",
    weights: Callable[[torch.nn.Module], None] | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """A random tiny HF model saved (safetensors) at `path`; the model, in eval mode.

    `weights` changes the parameters (under no_grad) before saving; `max_shard_size` as in
    `save_pretrained` (a small one gives a sharded checkpoint with an index).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(vocab_size, arch, tied, **overrides)).eval()
    if weights is not None:
        with torch.no_grad():
            weights(model)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return model


# The tiny training corpus and config of the trainer tests: Russian (the shared corpus when
# present, else the bundled sample) and English text in Mistral's tokenizer, ids folded into the
# tiny preset's 512-token vocabulary.
VOCAB = 512
EOD = 2


def _compact_corpus(texts: list[str], sp, keep: list[int]) -> list[list[int]]:
    """Token ids of `texts` folded into VOCAB ids: 0 = any rare id, 1/2 = BOS/EOS, 3.. by frequency."""
    docs = [sp.encode(t) for t in texts]
    counts = collections.Counter(i for d in docs for i in d)
    frequent = [i for i, _ in counts.most_common() if i not in keep][: VOCAB - len(keep) - 1]
    table = {old: new for new, old in enumerate([*keep, *frequent], start=1)}
    return [[table.get(i, 0) for i in d] + [EOD] for d in docs]


def make_corpus(out: Path) -> dict[str, str]:
    import sentencepiece as spm

    from vikhr.assets import EN_SAMPLE, MISTRAL_TOKENIZER, RU_SAMPLE
    from vikhr.data.indexed import write_indexed
    from vikhr.jsonl import read_texts

    ru_source = SHARED_DATA / "corpus" / "ru" / "ruslit.jsonl.gz"
    if not ru_source.is_file():
        ru_source = RU_SAMPLE
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_TOKENIZER))
    keep = [sp.bos_id(), sp.eos_id()]  # -> 1, 2 (EOD)
    prefixes = {}
    for name, source, n_docs in (("ru", ru_source, 160), ("en", EN_SAMPLE, 60)):
        texts = []
        for text in read_texts(source):
            # Several short documents per source text, so the valid split gets whole documents.
            texts.extend(text[i : i + 1500] for i in range(0, min(len(text), 6000), 1500))
            if len(texts) >= n_docs:
                break
        write_indexed(out / name, _compact_corpus(texts[:n_docs], sp, keep), "uint16")
        prefixes[name] = str(out / name)
    return prefixes


def write_config(path: Path, corpus: dict[str, str], run_dir: Path, **sections: dict) -> Path:
    cfg = {
        "model": {"preset": "tiny", "attention": "sdpa", "vocab_multiple": 128},
        "parallel": {"tensor": 1, "device": "cpu"},
        "data": {
            "train": [
                {"prefix": corpus["ru"], "weight": 0.8, "name": "ru"},
                {"prefix": corpus["en"], "weight": 0.2, "name": "en"},
            ],
            "split": "85,15,0",
            "seq_len": 64,
            "eod_id": EOD,
            "valid_samples": 8,
        },
        "train": {"steps": 8, "micro_batch": 2, "global_batch": 8, "seed": 1234},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "decay": "cosine"},
        "kl": {"weight": 0.5, "direction": "reverse", "reference": "init"},
        "checkpoint": {"dir": str(run_dir), "save_every": 4, "resume": "auto"},
        "logging": {"log_every": 1, "eval_every": 4, "tensorboard": False},
    }
    for section, values in sections.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def sentencepiece_with_added_tokens(path: Path) -> Path:
    """A chat model's tokenizer directory: Mistral's `tokenizer.model` and a `tokenizer.json` of it
    that adds `<|im_end|>` (32000) and `<|im_start|>` (32001) as special tokens, with a
    tokenizer_config.json naming `<|im_end|>` EOS and holding a ChatML template (as OpenHermes-2.5)."""
    import json
    import shutil

    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.tokenizer.hf_export import write_hf_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MISTRAL_TOKENIZER, path / "tokenizer.model")
    write_hf_tokenizer(path / "tokenizer.model", path)
    tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
    added = ["<|im_end|>", "<|im_start|>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    tok.save(str(path / "tokenizer.json"))
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    for i, token in enumerate(added, start=32000):
        config["added_tokens_decoder"][str(i)] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    config["eos_token"] = "<|im_end|>"
    config["chat_template"] = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def replace_within_one_tick(path: Path, text: str) -> None:
    """Rename a new file holding `text` over `path`, with `path`'s size and modification time: a file
    written again within one tick of a coarse file system clock, told apart by its inode alone."""
    old = path.stat()
    data = text.encode("utf-8")
    assert len(data) == old.st_size and data != path.read_bytes(), "new text, as long as the old"
    new = path.with_name(f".{path.name}.new")
    new.write_bytes(data)
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)


def written_an_hour_ago(*paths: Path) -> None:
    """Give the files an hour-old modification time: settled, so that a process may cache what they
    hold by their stamps (vikhr.file_stamps)."""
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for path in paths:
        os.utime(path, ns=(an_hour_ago, an_hour_ago))


def rewrite_in_place_within_one_tick(path: Path, text: str) -> None:
    """Write `text` over `path`'s bytes in place (its inode), with `path`'s size and modification time:
    a file written again within one tick of a coarse file system clock, the same to its stamp."""
    old = path.stat()
    data = text.encode("utf-8")
    assert len(data) == old.st_size and data != path.read_bytes(), "new text, as long as the old"
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (old.st_ino, old.st_size, old.st_mtime_ns)


def hub_snapshot(src: Path, repo: Path) -> Path:
    """The files of `src` laid out as an HF hub cache: repo/snapshots/REV/NAME, each a relative link
    to repo/blobs/SHA256 (a blob's name says nothing of what it is); the snapshot directory."""
    import hashlib
    import os
    import shutil

    snapshot, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in src.iterdir():
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def sentencepiece_with_other_ids(path: Path) -> Path:
    """Mistral's .model with the pieces of ids 1000 and 1001 swapped: another tokenizer of the same
    vocabulary size (its datasets have the same token dtype), whose ids mean other pieces."""
    from vikhr.assets import MISTRAL_TOKENIZER
    from vikhr.tokenizer.hf_export import load_model_proto

    proto = load_model_proto(MISTRAL_TOKENIZER)
    a, b = proto.pieces[1000], proto.pieces[1001]
    a.piece, b.piece = b.piece, a.piece
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


class TerminalStderr(io.StringIO):
    """A stderr that says it is a terminal: where vikhr draws its progress bars."""

    def isatty(self) -> bool:
        return True


def stderr_of_cli(argv: list[str], terminal: bool, monkeypatch: Any) -> str:
    """What `vikhr ARGV` (which must succeed) writes to a stderr that is a terminal or, as in a log, not."""
    from vikhr.cli import main as cli_main

    stream = TerminalStderr() if terminal else io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", stream)
        assert cli_main(argv) == 0, stream.getvalue()
    return stream.getvalue()


def run_vikhr_child(argv: list[str], hash_seed: int, threads: int) -> None:
    """`vikhr ARGV` in a child process with PYTHONHASHSEED=`hash_seed` and `threads` OpenMP (torch) and
    Rayon (HF tokenizers) threads: the settings a deterministic output must not depend on, and that
    two runs in one process cannot vary. Fails the test with the child's stderr unless it succeeds."""
    threads_env = {"OMP_NUM_THREADS": str(threads), "RAYON_NUM_THREADS": str(threads)}
    env = {**child_env(), "PYTHONHASHSEED": str(hash_seed), **threads_env}
    proc = subprocess.run(
        [sys.executable, "-m", "vikhr", *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (by its relative path) with its bytes."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def varied_chat_lines(n: int) -> list[str]:
    """`n` chat lines: the bundled seed chats and, every third, a multi-turn chat with a system turn
    and a first answer of weight 0 (every ninth with an empty last answer); a blank line every 50."""
    from vikhr.assets import RU_SEED_CHATS

    seed = [json.loads(line)["messages"] for line in RU_SEED_CHATS.read_text(encoding="utf-8").splitlines()]
    lines = []
    for i in range(n):
        first, second = seed[i % len(seed)], seed[(i + 1) % len(seed)]
        if i % 3:
            messages = first
        else:
            last = {"role": "assistant", "content": ""} if i % 9 == 0 else second[1]
            system = {"role": "system", "content": f"Отвечай кратко ({i})."}
            messages = [system, first[0], {**first[1], "weight": 0}, second[0], last]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False) + ("\n" if i % 50 == 49 else ""))
    return lines


def running_versions() -> dict[str, Any]:
    """What this process runs, found apart from vikhr.provenance: vikhr's installed version, the
    checkout's `git describe --always --dirty` (None outside a checkout or without git), torch's and
    megatron-core's versions and torch's intra-op thread count."""
    from importlib.metadata import version

    try:
        commit: str | None = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "vikhr": version("vikhr"),
        "commit": commit,
        "torch": torch.__version__,
        "megatron-core": version("megatron-core"),
        "threads": torch.get_num_threads(),
    }
