"""`vikhr demo`: the whole pipeline on the bundled sample, on the CPU, with no downloads.

The paper's recipe at toy scale, every stage through vikhr's own API:

  1. split      held-out documents (by a hash of their id) are kept out of every training step
  2. tokenizer  train a SentencePiece BPE on the Russian and English training splits; compare it
                with Mistral's
  3. base       pre-train a tiny Mistral-shaped model with Mistral's tokenizer on RU+EN (it stands
                in for Mistral-7B, which cannot be downloaded here) and export it to HF format
  4. adapt      vocabulary adaptation of the HF base to the new tokenizer (Hewitt mean init)
  5. tokenize   Rust pre-tokenization of the corpora into Megatron .bin/.idx with the new tokenizer
  6. continue   continued pre-training of all weights with CE + λ·KL(P_model ‖ P_base-adapted)
  7. instruct   instruction tuning of the continued model on Russian chats (loss on the assistant
                tokens only, each packed chat attending only to itself), exported to HF; the chats
                are encoded right after stage 2, so a --seq-len too short for every chat's prompt is
                refused (with the smallest that works) before any training stage
  8. evaluate   bits per character on the held-out Russian and English text for the base, the
                adapted model before and after continued training (tokenizer-independent); the
                held-out chats' assistant-token loss before and after instruction tuning, and
                one answer of the tuned toy model

`--family byte-bpe` runs the same chain for a byte-level BPE model (Llama-3 and its kin): the
stand-in base tokenizer is a byte-level BPE with Llama-3's pre-tokenizer and special tokens trained
on the English sample; stage 2 *extends* it with Russian tokens (every text without Cyrillic keeps
its ids); the stand-in base is Llama-3-shaped (RoPE θ 500k, "llama3" RoPE scaling, exported as
`LlamaForCausalLM`), and the chats use Llama-3's header template (a --base-tokenizer without its
header tokens is refused before the first stage).

Outputs (tokenizers, reports, checkpoints, TensorBoard logs, HF models, summary.json) go to --workdir.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vikhr.atomic import missing_dirs, output_dir, remove_empty_dirs, temporary_path, write_text
from vikhr.errors import VikhrError, refuse_to_replace, require_file, require_writable_dir
from vikhr.locks import exclusive
from vikhr.tokenizer.byte_level import LLAMA3_PATTERN
from vikhr.tokenizer.load import resolve_tokenizer_file

# Meta-Llama-3's pre-tokenizer split and the special tokens its base and instruct models use.
LLAMA3_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
LOCK_FILE = ".demo.lock"  # in --workdir while a demo runs there


@dataclass(frozen=True)
class Family:
    """What differs between the demo's two model families."""

    base_label: str  # the base tokenizer's name in the report
    tokenizer_type: str  # vikhr data preprocess --tokenizer-type
    template: str  # vikhr.sft.template chat template
    shape: dict[str, Any]  # model.overrides of the tiny preset


FAMILIES = {
    "sentencepiece": Family("mistral", "SentencePieceTokenizer", "mistral", {}),
    # Llama-3: RoPE θ 500k and Llama-3.1's "llama3" frequency scaling (exported as LlamaForCausalLM).
    "byte-bpe": Family(
        "llama3-like",
        "HuggingFaceTokenizer",
        "llama3",
        {"rope_theta": 500_000.0, "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 64},
    ),
}


def llama3_like_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int) -> Path:
    """A byte-level BPE of `vocab_size` tokens trained on `texts`, laid out like Llama-3's tokenizer:
    its split regex then ByteLevel, `ignore_merges`, its special tokens after the vocabulary and
    `<|begin_of_text|>` prepended by the post-processor (tokenizer_config.json names BOS and EOS).
    The demo's stand-in for Llama-3's tokenizer, which cannot be downloaded here."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.model.ignore_merges = True
    tok.add_special_tokens(list(LLAMA3_SPECIALS))
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tok.token_to_id(bos))]
            ),
        ]
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "bos_token": bos,
        "eos_token": "<|end_of_text|>",
    }
    with output_dir(out_dir) as work:
        tok.save(str(work / "tokenizer.json"))
        write_text(work / "tokenizer_config.json", json.dumps(config, indent=2))
    return out_dir


def _write_jsonl(path: Path, docs: list[dict[str, str]]) -> None:
    # No time or file name in the gzip header: the same documents give the same file (and the same
    # sha256 in the tokenizer's manifest) on every run.
    with (
        temporary_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        gz.write("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode())


def split_heldout(path: Path, out: Path, name: str) -> tuple[Path, Path, int]:
    """(train JSONL, held-out JSONL, held-out documents) by the tokenizer's deterministic hash split
    of document ids."""
    from vikhr.tokenizer.corpus import iter_documents

    # The demo and `vikhr ablate` have no --text-key: their corpora hold the text under "text".
    fix = "every record needs its text in a string 'text' field"
    parts = {
        split: [{"id": d.doc_id, "text": d.text} for d in iter_documents(path, split=split, text_key_fix=fix)]
        for split in ("train", "heldout")
    }
    if not parts["train"] or not parts["heldout"]:
        raise VikhrError(f"{path}: too few documents to keep a held-out split")
    _write_jsonl(out / f"{name}-train.jsonl.gz", parts["train"])
    _write_jsonl(out / f"{name}-heldout.jsonl.gz", parts["heldout"])
    print(f"      {name}: {len(parts['train'])} training, {len(parts['heldout'])} held-out documents")
    return out / f"{name}-train.jsonl.gz", out / f"{name}-heldout.jsonl.gz", len(parts["heldout"])


def bits_per_char(
    hf_dir: Path, tokenizer: Path, texts: dict[str, Path], docs: int, seq_len: int, device: str = "cpu"
) -> dict[str, float]:
    """Bits per character of the HF model on the first `docs` texts of each file of `texts` (name →
    file), through `vikhr eval`'s bpc task; the model is loaded once for all of them."""
    from vikhr.eval.lm import evaluation_bars
    from vikhr.eval.runner import EvalSettings, load_lm, run_eval

    def settings(held: Path) -> EvalSettings:
        return EvalSettings(
            model_dir=hf_dir,
            tasks=["bpc"],
            data_dir=held.parent,
            bpc_data=held,
            tokenizer=tokenizer,
            limit=docs,
            device=device,
            dtype="float32",
            max_length=seq_len,
        )

    bpc: dict[str, float] = {}
    lm = None
    # lm-eval draws a progress bar per document; the demo prints one table instead.
    with evaluation_bars(show=False):
        for name, held in texts.items():
            lm = load_lm(settings(held)) if lm is None else lm
            results = run_eval(settings(held), lm=lm)
            bpc[name] = float(results["tasks"]["bpc"]["metrics"]["bpc"])
    return bpc


SFT_SEQ_LEN_FACTOR = 2  # the SFT stage's data.seq_len is this times --seq-len: chats are longer than texts
SFT_SPLIT = "85,15,0"  # the SFT stage's data.split


def smallest_sft_seq_len(prefix: Path) -> int | None:
    """The smallest --seq-len whose SFT windows hold an assistant token of some train chat of the
    prepared dataset `prefix` (None: no train chat has one at all), by the trainer's own rule
    (`vikhr.sft.data`: position t of a window is a label only for t >= 1, windows hold data.seq_len + 1
    tokens)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from vikhr.sft.data import split_chats
    from vikhr.sft.layout import sft_datasets

    mask = IndexedDataset(sft_datasets(prefix)[1])
    train_ids, _ = split_chats(len(mask), SFT_SPLIT)
    first_labels = []
    for chat in train_ids.tolist():
        labelled = np.flatnonzero(mask.get(chat)[1:])
        if len(labelled):
            first_labels.append(int(labelled[0]) + 1)
    if not first_labels:
        return None
    # A window of data.seq_len + 1 tokens labels positions 1..data.seq_len.
    return -(-min(first_labels) // SFT_SEQ_LEN_FACTOR)


def train_config(
    workdir: Path,
    name: str,
    prefixes: list[tuple[str, str, float]],
    vocab_size: int,
    args: argparse.Namespace,
    steps: int,
    init: str = "random",
    kl_weight: float = 0.0,
    sft: bool = False,
    family_shape: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    check_files: bool = True,
) -> Any:
    """The demo's trainer config for one run; `extra` overrides (section.key=value) come last and win.
    `check_files=False` checks the settings alone (the datasets need not exist yet)."""
    from vikhr.train.config import load_config

    family_shape = family_shape or {}

    blend = [{"prefix": p, "name": n, "weight": w} for n, p, w in prefixes]
    seq_len = SFT_SEQ_LEN_FACTOR * args.seq_len if sft else args.seq_len
    overrides = [
        "model.preset=tiny",
        f"model.overrides={json.dumps({'vocab_size': vocab_size, 'max_seq_len': seq_len, **family_shape})}",
        f"model.init={init}",
        "parallel.device=cpu",
        f"data.kind={'sft' if sft else 'pretrain'}",
        f"data.train={json.dumps(blend)}",
        f"data.split={SFT_SPLIT if sft else '95,5,0'}",
        f"data.seq_len={seq_len}",
        "data.valid_samples=16",
        f"train.steps={steps}",
        "train.micro_batch=4",
        "train.global_batch=8",
        f"train.seed={args.seed}",
        f"optim.lr={args.lr}",
        f"optim.min_lr={args.lr / 10}",
        f"optim.warmup_steps={min(10, steps - 1)}",  # below train.steps: a short grid's LR reaches lr
        f"kl.weight={kl_weight}",
        f"checkpoint.dir={workdir / name}",
        f"checkpoint.save_every={steps}",
        "checkpoint.resume=never",
        "checkpoint.save_on_signals=[]",  # the demo starts afresh each time: a SIGTERM just ends it
        f"logging.log_every={max(1, steps // 5)}",
        f"logging.eval_every={steps}",
        *extra,
    ]
    return load_config(None, overrides, check_files=check_files)


def _parameter_count(hf_dir: Path) -> int:
    """Parameters of an HF checkpoint, from its safetensors headers (a tied head counted once)."""
    import math

    from vikhr.adapt.safetensors_io import checkpoint_headers

    return sum(math.prod(t.shape) for h in checkpoint_headers(hf_dir) for t in h.tensors.values())


def _valid_losses(run_dir: Path, name: str) -> tuple[float, float]:
    """(first, last) validation loss of dataset `name` in a run's metrics."""
    from vikhr.train.monitor import read_metrics

    _, valid = read_metrics(run_dir)
    losses = [valid[step][f"loss_{name}"] for step in sorted(valid) if f"loss_{name}" in valid[step]]
    return losses[0], losses[-1]


def _answer(hf_dir: Path, tokenizer: Path, template: str, question: str, max_new_tokens: int = 32) -> str:
    """Greedy answer of an HF model to one user turn, through the SFT chat template."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from vikhr.sft.template import encode_chat, end_of_turn_id, load_chat_tokenizer, parse_chat

    hf_logging.disable_progress_bar()
    tok = load_chat_tokenizer(tokenizer, template)
    chat = parse_chat({"messages": [{"role": "user", "content": question}]}, for_generation=True)
    prompt = encode_chat(chat, tok, template, for_generation=True).ids
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=end_of_turn_id(tok, template),
        )
    return tok.decode(out[0, len(prompt) :].tolist())


def _mostly_english(en: Path, ru: Path, russian_share: float = 0.05) -> Iterator[str]:
    """The English texts, then Russian ones up to `russian_share` of the characters: the mix of an
    English-centric model's tokenizer (Llama-3 has some Russian tokens, far fewer than English)."""
    from vikhr.jsonl import read_texts

    english = 0
    for text in read_texts(en):
        english += len(text)
        yield text
    budget = russian_share / (1 - russian_share) * english
    for text in read_texts(ru):
        if budget <= 0:
            return
        budget -= len(text)
        yield text


class Demo:
    """The demo's eight stages, in order; each reads what the previous ones left on `self`."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.data = workdir / "data"
        self.family = FAMILIES[args.family]
        # byte-bpe without --base-tokenizer: the Llama-3-like stand-in is trained in stage 2.
        self.base_tok = args.base_tokenizer and require_file(args.base_tokenizer, "base tokenizer")
        self.t0 = time.time()
        self.summary: dict[str, Any] = {}

    def stage(self, n: int, text: str) -> None:
        print(f"\n[{n}/8] {text}  (+{time.time() - self.t0:.0f}s)", flush=True)

    def tokenize(self, name: str, corpus: Path, tokenizer: Path) -> str:
        """Pre-tokenize `corpus` into data/NAME; returns the dataset prefix."""
        from vikhr.data import preprocess

        s = preprocess(
            [corpus], self.data / name, tokenizer, tokenizer_type=self.family.tokenizer_type, append_eod=True
        )
        print(f"      {name}: {s.line()}")
        return s.outputs[0]

    def train(
        self, name: str, blend: list[tuple[str, str, float]], vocab: int, steps: int, **kw: Any
    ) -> Path:
        """One trainer run in WORKDIR/NAME; returns its last checkpoint."""
        from vikhr.train.checkpoint import find_checkpoint
        from vikhr.train.trainer import run as train

        config = train_config(
            self.workdir, name, blend, vocab, self.args, steps, family_shape=self.family.shape, **kw
        )
        train(config)
        return find_checkpoint(self.workdir / name)

    def split(self, ru: Path, en: Path) -> None:
        self.stage(1, "split: held-out documents are kept out of every training step")
        corpora = self.workdir / "corpora"
        corpora.mkdir()
        held = {}
        self.ru_train, self.ru_held, held["RU"] = split_heldout(ru, corpora, "ru")
        self.en_train, self.en_held, held["EN"] = split_heldout(en, corpora, "en")
        for lang, found in held.items():
            if found < self.args.eval_docs:
                print(
                    f"warning: --eval-docs is {self.args.eval_docs}, but the {lang} corpus keeps {found} "
                    "held-out document(s): bits per character are measured on those",
                    file=sys.stderr,
                )

    def tokenizer(self) -> None:
        from vikhr.tokenizer.train import TrainSettings, train_tokenizer

        vocab_size = self.args.vocab_size
        tok_dir = self.workdir / "tokenizer"
        if self.family.tokenizer_type == "SentencePieceTokenizer":
            self.stage(2, f"tokenizer: SentencePiece BPE, {vocab_size} pieces, byte fallback, replace mode")
            settings = TrainSettings(vocab_size=vocab_size, split_by_script=False, verify_lines_per_file=200)
            train_tokenizer([self.ru_train, self.en_train], tok_dir, settings)
            self.new_tok = next(tok_dir.glob("*.model"))
        else:
            self.stage(
                2, f"tokenizer: byte-level BPE extended with Russian tokens to {vocab_size} (extend mode)"
            )
            if self.base_tok is None:
                base_dir, base_size = self.workdir / "base-tokenizer", vocab_size // 2
                texts = _mostly_english(self.en_train, self.ru_train)
                self.base_tok = llama3_like_tokenizer(texts, base_dir, base_size)
                print(
                    f"      base: Llama-3-like byte-level BPE, {base_size} tokens, English + a little Russian"
                )
            settings = TrainSettings(
                mode="extend", vocab_size=vocab_size, base_model=str(self.base_tok), verify_lines_per_file=200
            )
            train_tokenizer([self.ru_train], tok_dir, settings)
            self.new_tok = tok_dir
        self.compare_tokenizers()

    def prepare_chats(self, chats: Path) -> None:
        """Encode the SFT chats with the new tokenizer now, so that a --seq-len too short for every
        chat's prompt is refused before the training stages, not at the instruct stage."""
        from vikhr.sft.prepare import prepare_sft

        self.data.mkdir(exist_ok=True)
        self.chats = self.data / "chats"
        self.chats_line = prepare_sft(chats, self.new_tok, self.chats, template=self.family.template).line()
        smallest = smallest_sft_seq_len(self.chats)
        if smallest is not None and self.args.seq_len < smallest:
            raise VikhrError(
                f"--seq-len {self.args.seq_len} is too short for the SFT chats of {chats}: with the new "
                f"tokenizer no train chat's prompt ends within {SFT_SEQ_LEN_FACTOR} x --seq-len tokens; "
                f"pass --seq-len {smallest} or more"
            )

    def compare_tokenizers(self) -> None:
        from vikhr.tokenizer.compare import compare

        report, base = self.workdir / "report", self.family.base_label
        results = compare(
            [f"{base}={self.base_tok}", f"vikhr={self.new_tok}"],
            [f"ru={self.ru_held}", f"en={self.en_held}"],
            report,
        )
        cpt = {(r.tokenizer, r.text_set): r.chars_per_token for r in results}
        self.summary["chars_per_token"] = {f"{t}/{s}": round(v, 3) for (t, s), v in cpt.items()}
        print(
            f"      chars/token on held-out RU: {base} {cpt[(base, 'ru')]:.2f} -> vikhr "
            f"{cpt[('vikhr', 'ru')]:.2f}; EN: {cpt[(base, 'en')]:.2f} -> {cpt[('vikhr', 'en')]:.2f}"
            f"  (report: {report / 'report.md'})"
        )

    def base(self) -> None:
        from vikhr.convert import megatron_to_hf
        from vikhr.tokenizer import load as load_tokenizer

        shape = "Mistral" if self.family.template == "mistral" else "Llama-3"
        self.stage(3, f"base: tiny {shape}-shaped model pre-trained with the base tokenizer, exported to HF")
        ru = self.tokenize("base-ru", self.ru_train, self.base_tok)
        en = self.tokenize("base-en", self.en_train, self.base_tok)
        self.base_vocab = load_tokenizer(self.base_tok).vocab_size
        ckpt = self.train("base", [("en", en, 0.5), ("ru", ru, 0.5)], self.base_vocab, self.args.base_steps)
        self.base_hf = megatron_to_hf(ckpt, self.workdir / "base-hf", tokenizer=self.base_tok)

    def adapt(self) -> None:
        from vikhr.adapt import adapt_vocab
        from vikhr.convert import hf_to_megatron
        from vikhr.tokenizer import load as load_tokenizer

        self.stage(4, "adapt: new embeddings and LM head; known pieces copied, new ones = mean of old pieces")
        self.adapted_hf = self.workdir / "adapted-hf"
        self.adapt_summary = adapt_vocab(
            self.base_hf, self.base_tok, self.new_tok, self.adapted_hf, show_progress=False
        )
        print(f"      {json.dumps({k: v for k, v in self.adapt_summary.items() if isinstance(v, int)})}")
        self.new_vocab = load_tokenizer(self.new_tok).vocab_size
        self.adapted_vocab = json.loads((self.adapted_hf / "config.json").read_text())["vocab_size"]
        self.adapted_meg = hf_to_megatron(self.adapted_hf, self.workdir / "adapted-megatron")

    def continue_training(self) -> None:
        from vikhr.convert import megatron_to_hf

        self.stage(5, "tokenize: Rust pre-tokenizer -> Megatron .bin/.idx with the new tokenizer")
        ru = self.tokenize("vikhr-ru", self.ru_train, self.new_tok)
        en = self.tokenize("vikhr-en", self.en_train, self.new_tok)
        self.stage(6, f"continue: CE + {self.args.kl_weight}·KL(P_model ‖ P_adapted), RU-heavy blend")
        self.continued = self.train(
            "continued",
            [("ru", ru, 0.9), ("en", en, 0.1)],
            self.adapted_vocab,
            self.args.steps,
            init=str(self.adapted_meg),
            kl_weight=self.args.kl_weight,
        )
        self.final_hf = megatron_to_hf(self.continued, self.workdir / "vikhr-hf", tokenizer=self.new_tok)

    def instruct(self) -> None:
        from vikhr.convert import megatron_to_hf

        template = self.family.template
        self.stage(7, f"instruct: SFT on Russian chats, loss on assistant tokens only ({template} template)")
        print(f"      {self.chats_line}")  # prepared after the tokenizer stage (prepare_chats)
        ckpt = self.train(
            "instructed",
            [("chats", str(self.chats), 1.0)],
            self.adapted_vocab,
            self.args.sft_steps,
            init=str(self.continued),
            sft=True,
        )
        # The chat template comes from the SFT data the run records (vikhr.convert.hf_tokenizer).
        self.instruct_hf = megatron_to_hf(ckpt, self.workdir / "vikhr-instruct-hf", tokenizer=self.new_tok)

    def evaluate(self) -> None:
        args = self.args
        self.stage(8, "evaluate: bits per character on held-out text (lower is better)")
        bpc = {}
        for label, hf_dir, tok in (
            (f"base ({self.family.base_label} tokenizer)", self.base_hf, self.base_tok),
            ("adapted, before training", self.adapted_hf, self.new_tok),
            ("adapted + continued", self.final_hf, self.new_tok),
        ):
            held = {"ru": self.ru_held, "en": self.en_held}
            bpc[label] = bits_per_char(hf_dir, tok, held, args.eval_docs, args.seq_len)
        print(f"      {'model':28s} {'RU bpc':>8s} {'EN bpc':>8s}")
        for label, v in bpc.items():
            print(f"      {label:28s} {v['ru']:8.3f} {v['en']:8.3f}")
        before, after = _valid_losses(self.workdir / "instructed", "chats")
        print(f"      held-out chats, assistant-token loss: {before:.3f} before SFT -> {after:.3f} after")
        question = "Назови три столицы европейских государств."
        answer = _answer(self.instruct_hf, self.new_tok, self.family.template, question)
        parameters = _parameter_count(self.instruct_hf)
        millions = parameters / 1e6
        print(
            f"      asked «{question}», the tuned toy model answers {answer!r}\n"
            f"      ({millions:.1f}M parameters and a few CPU minutes of training: the stages work, the "
            "answers do not yet)"
        )
        self.summary.update(
            {
                "sft_valid_loss": {"before": before, "after": after},
                "sft_answer": {"question": question, "answer": answer, "model_parameters": parameters},
                "bits_per_char": bpc,
                "vocab": {
                    "base": self.base_vocab,
                    "new": self.new_vocab,
                    "adapted_model": self.adapted_vocab,
                },
                "adapt": {k: v for k, v in self.adapt_summary.items() if isinstance(v, int | float | str)},
            }
        )

    def finish(self) -> None:
        self.summary["seconds"] = round(time.time() - self.t0, 1)
        write_text(self.workdir / "summary.json", json.dumps(self.summary, indent=2, ensure_ascii=False))
        print(f"\ndone in {time.time() - self.t0:.0f}s; summary in {self.workdir / 'summary.json'}")


def _check_numbers(args: argparse.Namespace) -> None:
    """Every number the stages will use, checked before the first stage runs."""
    positive = ("vocab_size", "base_steps", "steps", "sft_steps", "seq_len", "eval_docs")
    for name in positive:
        if getattr(args, name) <= 0:
            raise VikhrError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.lr < float("inf"):
        raise VikhrError(f"--lr must be a positive finite number, got {args.lr}")
    if not 0 <= args.kl_weight < float("inf"):
        raise VikhrError(f"--kl-weight must be a finite number >= 0, got {args.kl_weight}")
    if not 0 <= args.seed < 2**32:  # numpy's and torch's generators take seeds in [0, 2^32)
        raise VikhrError(f"--seed must be in [0, 2^32), got {args.seed}")


def _check_extended_size(vocab_size: int, base_ids: int, base: str) -> None:
    """The byte-bpe demo extends its base tokenizer to --vocab-size ids: one that adds none is refused
    before any stage (the tokenizer stage refused it after the split, naming --new-tokens, a flag
    the demo has not got)."""
    if vocab_size <= base_ids:
        raise VikhrError(
            f"--vocab-size {vocab_size} adds no tokens to {base} ({base_ids} ids): the byte-bpe demo "
            f"extends it with Russian ones; give a --vocab-size above {base_ids}"
        )


def _check_base_tokenizer(base_tokenizer: str, family: Family, vocab_size: int) -> int:
    """The base tokenizer's vocabulary size. It is loaded before any stage: a file that is no tokenizer
    is refused now, not by the tokenizer stage after the split. The chats are written with `family`'s
    template, whose control tokens the new tokenizer has only when the base it extends has them: a base
    without Llama-3's header tokens is refused now too, as is a --vocab-size that extends it by nothing."""
    from vikhr.sft.template import TEMPLATE_TOKENS
    from vikhr.tokenizer.load import load

    tok = load(base_tokenizer)
    if family.template != "llama3":
        return tok.vocab_size
    _check_extended_size(vocab_size, tok.vocab_size, f"--base-tokenizer {base_tokenizer}")
    missing = [token for token in TEMPLATE_TOKENS["llama3"] if tok.piece_to_id(token) is None]
    if missing:
        raise VikhrError(
            f"--base-tokenizer {base_tokenizer} has no {' / '.join(missing)} token"
            f"{'s' if len(missing) > 1 else ''}: the byte-bpe demo writes its chats with Llama-3's header "
            "template, which needs each as one id; give a Llama-3 tokenizer (or one with those special "
            "tokens), or leave out --base-tokenizer for the Llama-3-like stand-in"
        )
    return tok.vocab_size


def _check_sentencepiece_base(given: Path, file: Path) -> None:
    """The sentencepiece demo pre-tokenizes with --tokenizer-type SentencePieceTokenizer, base and new
    tokenizer alike: a base `file` (what `given` resolved to) that is an HF tokenizer.json or a tiktoken
    file is refused now, not at stage 3 after the split and tokenizer stages."""
    from vikhr.tokenizer.load import is_tiktoken_file, json_over_model_reason

    needs = "the sentencepiece demo needs a SentencePiece .model"
    if file.suffix == ".json":
        beside = given / "tokenizer.model"
        which, give = "", "give a .model"
        if given.is_dir():
            reason = f": {json_over_model_reason(given)}" if beside.is_file() else ""
            which = f" ({file}{reason})"
            if beside.is_file() and not is_tiktoken_file(beside):
                give = f"give {beside} (or another .model)"
        raise VikhrError(
            f"--base-tokenizer {given} is an HF tokenizer.json{which}; {needs}: {give}, or --family byte-bpe"
        )
    if is_tiktoken_file(file):
        raise VikhrError(
            f"--base-tokenizer {given} is a tiktoken BPE file (as Llama-3's original/tokenizer.model), no "
            f"SentencePiece model; {needs}: give a .model, or --family byte-bpe with the model's "
            "tokenizer.json"
        )


def _check_memory(args: argparse.Namespace, base_vocab: int) -> None:
    """Every training stage's windows fit this machine's memory by the trainer's estimate (which each
    stage's run checks too, after the stages before it): a --seq-len too long for one is refused
    before the first stage, with the longest that fits them all."""
    from vikhr.train.memory import GIB, USABLE_SHARE, longest_fitting_seq_len, memory_here, run_estimate

    capacity, memory = memory_here(on_cuda=False)  # the demo trains on the CPU
    stages = (
        ("base", base_vocab, args.base_steps, {}),
        ("continue", args.vocab_size, args.steps, {"kl_weight": args.kl_weight}),
        ("instruct", args.vocab_size, args.sft_steps, {"sft": True}),
    )
    longest, refused = args.seq_len, None
    for stage, vocab, steps, kw in stages:
        cfg = train_config(
            Path("demo"), stage, [("d", "d", 1.0)], vocab, args, steps, check_files=False, **kw
        )
        factor = SFT_SEQ_LEN_FACTOR if kw.get("sft") else 1
        need = run_estimate(cfg, 1, on_cuda=False).total
        if need > capacity:
            fits = longest_fitting_seq_len(cfg, 1, USABLE_SHARE * capacity, on_cuda=False) // factor
            longest, refused = min(longest, fits), refused or (stage, cfg, need)
    if refused is not None:
        stage, cfg, need = refused
        fix = f"pass --seq-len {longest} or less" if longest else "run it on a machine with more memory"
        raise VikhrError(
            f"--seq-len {args.seq_len} does not fit in memory: the {stage} stage's windows "
            f"({cfg.train.micro_batch} × {cfg.data.seq_len} tokens) need about {need / GIB:,.1f} GiB by "
            f"the trainer's memory estimate, more than the {memory}; {fix}"
        )


def _leftovers(workdir: Path) -> list[Path]:
    """What is in `workdir` besides the demo's lock: an earlier run's outputs, or someone else's files."""
    return [entry for entry in workdir.iterdir() if entry.name != LOCK_FILE]


def _clear(workdir: Path) -> None:
    """Remove what is in `workdir` except the lock the running demo holds there."""
    for entry in _leftovers(workdir):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _workdir_lock(workdir: Path) -> contextlib.AbstractContextManager[bool]:
    """One demo at a time in `workdir`: a second one would clear the first's files (--overwrite) and
    write the same stages. A lock left by a killed demo is free (the kernel released it) and is taken."""
    busy = (
        f"--workdir {workdir} is in use by another vikhr demo ({{holder}}); wait for it to end, stop it, "
        "or give this demo another --workdir"
    )
    return exclusive(workdir / LOCK_FILE, busy, remove=True)


def run(args: argparse.Namespace) -> int:
    _check_numbers(args)
    ru = require_file(args.ru_corpus, "Russian corpus")
    en = require_file(args.en_corpus, "English corpus")
    chats = require_file(args.sft_chats, "SFT chats")
    if args.base_tokenizer is None and args.family == "sentencepiece":
        from vikhr import assets

        args.base_tokenizer = str(assets.MISTRAL_TOKENIZER)
    if args.base_tokenizer is not None:
        base = Path(args.base_tokenizer)
        # A directory (a model's, an earlier output's tok/), as every other tokenizer option takes it.
        args.base_tokenizer = str(resolve_tokenizer_file(base) if base.is_dir() else base)
        require_file(args.base_tokenizer, "base tokenizer")
        if FAMILIES[args.family].tokenizer_type == "SentencePieceTokenizer":
            _check_sentencepiece_base(base, Path(args.base_tokenizer))
        base_vocab = _check_base_tokenizer(args.base_tokenizer, FAMILIES[args.family], args.vocab_size)
    else:  # byte-bpe's stand-in: at least the 256 byte tokens and Llama-3's special tokens
        _check_extended_size(args.vocab_size, 256 + len(LLAMA3_SPECIALS), "the Llama-3-like stand-in base")
        base_vocab = args.vocab_size // 2 + len(LLAMA3_SPECIALS)  # as Demo.tokenizer trains it
    inputs = [ru, en, chats, *([args.base_tokenizer] if args.base_tokenizer is not None else [])]
    workdir = require_writable_dir(args.workdir, "--workdir")
    if args.overwrite and workdir.exists() and _leftovers(workdir):
        refuse_to_replace(workdir, inputs, "--workdir")
    from vikhr.runtime.megatron import import_megatron_core

    import_megatron_core()  # the trainer's config and the training stages import megatron-core
    _check_memory(args, base_vocab)
    created = missing_dirs(workdir)  # before --overwrite empties it: a folder that was there stays
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with _workdir_lock(workdir):
            _run_stages(args, workdir, ru, en, chats)
    except VikhrError:
        # A refused corpus, --vocab-size, --seq-len or chats file leaves no half-made work directory behind.
        remove_empty_dirs(created)
        raise
    return 0


def _run_stages(args: argparse.Namespace, workdir: Path, ru: Path, en: Path, chats: Path) -> None:
    """The eight stages in `workdir`, whose lock this process holds."""
    if _leftovers(workdir):
        if not args.overwrite:
            raise VikhrError(f"work directory {workdir} is not empty; pass --overwrite or choose another")
        _clear(workdir)
    demo = Demo(args, workdir)
    try:
        demo.split(ru, en)
        demo.tokenizer()
        demo.prepare_chats(chats)
    except VikhrError:
        _clear(workdir)
        raise
    demo.base()
    demo.adapt()
    demo.continue_training()
    demo.instruct()
    demo.evaluate()
    demo.finish()


def register(sub: argparse._SubParsersAction) -> None:
    from vikhr import assets
    from vikhr.cli import RawDescriptionHelpWithDefaults

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the bundled sample (CPU, no downloads)",
        description=__doc__,
        formatter_class=RawDescriptionHelpWithDefaults,
    )
    p.add_argument("--ru-corpus", default=str(assets.RU_SAMPLE), help="Russian JSONL(.gz) with id and text")
    p.add_argument("--en-corpus", default=str(assets.EN_SAMPLE), help="English JSONL(.gz) with id and text")
    p.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="sentencepiece",
        help="sentencepiece (default): Mistral's tokenizer, a new Russian one; byte-bpe: a Llama-3-like "
        "byte-level BPE extended with Russian tokens, a Llama-3-shaped model, Llama-3's chat template",
    )
    p.add_argument(
        "--base-tokenizer",
        default=None,
        help="the original tokenizer: a .model, a tokenizer.json or a directory holding one (default: the "
        "bundled Mistral .model; for byte-bpe, a Llama-3-like stand-in trained on the English sample)",
    )
    p.add_argument("--sft-chats", default=str(assets.RU_SEED_CHATS), help="chats JSONL for SFT")
    p.add_argument("--workdir", default="runs/demo", help="where outputs go (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="clear a non-empty work directory first")
    p.add_argument("--vocab-size", type=int, default=8000, help="new tokenizer size (default 8000)")
    p.add_argument("--base-steps", type=int, default=150, help="pre-training steps of the stand-in base")
    p.add_argument("--steps", type=int, default=150, help="continued pre-training steps")
    p.add_argument("--sft-steps", type=int, default=60, help="instruction-tuning steps")
    p.add_argument("--kl-weight", type=float, default=0.1, help="λ of the KL regulariser")
    p.add_argument(
        "--seq-len", type=int, default=128, help="tokens per training window (chats: twice as many)"
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of every training stage")
    p.add_argument("--eval-docs", type=int, default=8, help="held-out documents per language for bpc")
    p.add_argument("--seed", type=int, default=1234, help="seed of every training stage, in [0, 2^32)")
    p.set_defaults(func=run)
