"""Export a SentencePiece BPE model as a Hugging Face `tokenizer.json` that encodes identically.

SentencePiece BPE encodes by repeatedly merging the adjacent pair whose concatenation is the
vocabulary piece with the highest score (leftmost on ties). A `tokenizers` BPE model merges the
adjacent pair with the lowest merge rank (leftmost on ties). Listing, for every mergeable piece, all
of its two-part splits ordered by the piece's score gives the same order of merges, so both encode
the same ids. The normaliser reproduces `add_dummy_prefix` and the space → `▁` mapping of the
identity normalisation that Mistral and Llama use; unknown characters go to the `<0xXX>` byte tokens.
The decoder gives SentencePiece's text for ids but in the cases docs/tokenizer.md lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vikhr.atomic import write_text
from vikhr.errors import VikhrError, require_file

if TYPE_CHECKING:  # load.py builds on this module; the type is only an annotation here
    from vikhr.tokenizer.load import Tokenizer

SPIECE_UNDERLINE = "▁"
# The first line of a tiktoken BPE file: a token's bytes in base64, a space, its rank.
_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+\r?\n")


def is_tiktoken(head: bytes) -> bool:
    """Whether `head`, a file's first bytes, are a tiktoken BPE file's."""
    return _TIKTOKEN_LINE.match(head) is not None


def refuse_tiktoken(path: Path, head: bytes) -> None:
    """VikhrError naming the file's format when `head`, its first bytes, are a tiktoken BPE file's, which
    the SentencePiece parser would only call corrupt."""
    if is_tiktoken(head):
        raise VikhrError(
            f"{path} is a tiktoken BPE file (as Llama-3's original/tokenizer.model), not a SentencePiece "
            ".model: give the model's HF tokenizer.json (or its HF directory, which holds it)"
        )


def load_model_proto(path: str | Path) -> Any:
    """The parsed SentencePiece ModelProto of a `.model` file."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = require_file(path, "SentencePiece model")
    data = path.read_bytes()
    refuse_tiktoken(path, data[:1024])
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError subclasses that vary by version
        raise VikhrError(f"{path} is not a SentencePiece .model file ({e})") from e
    if len(proto.pieces) == 0:
        raise VikhrError(f"{path} is not a SentencePiece .model file (no pieces)")
    return proto


def _check_supported(proto: Any, where: str) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb

    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise VikhrError(f"{where}: only SentencePiece BPE models can be exported (this one is not BPE)")
    norm = proto.normalizer_spec
    if norm.name not in ("identity", "") or norm.precompiled_charsmap:
        raise VikhrError(
            f"{where}: normaliser '{norm.name}' is not supported; train with normalization_rule_name=identity"
        )
    if norm.remove_extra_whitespaces:
        raise VikhrError(f"{where}: remove_extra_whitespaces=true is not supported (Mistral/Llama use false)")
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise VikhrError(f"{where}: treat_whitespace_as_suffix=true is not supported")


def vocab_and_merges(proto: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (piece → id) and the merges in the order SentencePiece applies them."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    normal = pb.ModelProto.SentencePiece.NORMAL
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # Only NORMAL pieces take part in merges (control, unknown and byte pieces never do).
    mergeable = {p.piece: p.score for p in proto.pieces if p.type == normal}
    keyed: list[tuple[float, int, int, tuple[str, str]]] = []
    for piece, score in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                # Highest score first; among splits of one piece, the shorter left part first.
                keyed.append((-score, vocab[piece], cut, (left, right)))
    keyed.sort()
    return vocab, [m for *_, m in keyed]


def build_hf_tokenizer(model_path: str | Path) -> Any:
    """A `tokenizers.Tokenizer` equivalent to the SentencePiece BPE model at `model_path`."""
    from tokenizers import AddedToken, Tokenizer, models, normalizers, processors

    proto = load_model_proto(model_path)
    _check_supported(proto, str(model_path))
    vocab, merges = vocab_and_merges(proto)
    spec = proto.trainer_spec
    unk = proto.pieces[spec.unk_id].piece if spec.unk_id >= 0 else None
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
            dropout=None,
        )
    )
    steps = []
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None
    tok.decoder = build_decoder(proto)
    specials = [proto.pieces[i].piece for i in _special_ids(proto)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if spec.bos_id >= 0:
        bos = proto.pieces[spec.bos_id].piece
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, spec.bos_id)],
        )
    return tok


# The tail of an ASCII byte piece's name; spelled "< 0x0A>", the piece is not a byte to ByteFallback.
_ASCII_BYTE_TAIL = r"0x[0-7][0-9A-F]>"


def build_decoder(proto: Any) -> Any:
    """The `tokenizers` decoder that turns ids into the text `SentencePieceProcessor.decode` gives.

    SentencePiece drops the "▁" that starts the first piece (the dummy prefix), never a space from a
    `<0x20>` byte piece, and decodes a run of byte pieces character by character: an invalid byte is
    one U+FFFD, the valid characters around it stay. `ByteFallback` replaces every byte of a run that
    is not valid UTF-8 as a whole, so the runs are first cut at the ASCII byte pieces (a character
    each) and those are decoded by a second pass. What no decoder reproduces is in docs/tokenizer.md.
    """
    from tokenizers import Regex, decoders

    hidden = [p.piece for p in proto.pieces if re.fullmatch("< " + _ASCII_BYTE_TAIL, p.piece)]
    if hidden:  # the decoder hides ASCII byte pieces under this spelling
        raise VikhrError(
            f"piece {hidden[0]!r} cannot be exported: the tokenizer.json would decode it as <{hidden[0][2:]}"
        )
    steps = [decoders.Replace(Regex(r"\A<(?=" + _ASCII_BYTE_TAIL + r"\z)"), "< ")]
    if proto.normalizer_spec.add_dummy_prefix:
        # Only the "▁" that starts a piece can be the dummy prefix, and only in the first piece:
        # Metaspace drops it there alone (Strip after Fuse would also eat a <0x20> byte's space).
        steps.append(decoders.Replace(Regex(f"(?<!\\A){SPIECE_UNDERLINE}"), " "))
        steps.append(decoders.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="first", split=False))
    else:
        steps.append(decoders.Replace(SPIECE_UNDERLINE, " "))
    steps += [
        decoders.ByteFallback(),  # the non-ASCII runs
        decoders.Replace(Regex(r"\A< (?=" + _ASCII_BYTE_TAIL + r"\z)"), "<"),
        decoders.ByteFallback(),  # the ASCII byte pieces
        decoders.Fuse(),
    ]
    return decoders.Sequence(steps)


def _special_ids(proto: Any) -> list[int]:
    """The unknown piece and every control piece (BOS, EOS, Mistral v0.3's [INST]/[/INST] …): special
    tokens of the export, so that a chat template's "[INST]" is read as the control it stands for."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    control = pb.ModelProto.SentencePiece.CONTROL
    unk = proto.trainer_spec.unk_id
    return [i for i, p in enumerate(proto.pieces) if p.type == control or i == unk]


def user_defined_texts(proto: Any) -> list[str]:
    """The texts of the user-defined pieces, which SentencePiece matches anywhere in a text and the export
    spells out piece by piece (docs/tokenizer.md)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    user_defined = pb.ModelProto.SentencePiece.USER_DEFINED
    return [p.piece.replace(SPIECE_UNDERLINE, " ") for p in proto.pieces if p.type == user_defined]


def tokenizer_config(model_path: str | Path, model_max_length: int = 32768) -> dict[str, Any]:
    """`tokenizer_config.json` contents for the exported tokenizer (Mistral-style specials, BOS added)."""
    proto = load_model_proto(model_path)
    spec = proto.trainer_spec

    def piece(i: int) -> str | None:
        return proto.pieces[i].piece if i >= 0 else None

    added = {
        str(i): {
            "content": proto.pieces[i].piece,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i in _special_ids(proto)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": piece(spec.bos_id),
        "eos_token": piece(spec.eos_id),
        "unk_token": piece(spec.unk_id),
        "pad_token": piece(spec.pad_id),
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        # transformers' LlamaTokenizer (named, or the class a loader picks) rebuilds the pipeline from the
        # vocabulary and prepends "▁" unless told the model has no dummy prefix.
        "add_prefix_space": bool(proto.normalizer_spec.add_dummy_prefix),
        "model_max_length": model_max_length,
        "padding_side": "left",
    }


def write_hf_tokenizer(model_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `tokenizer.json` and `tokenizer_config.json` for `model_path` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_hf_tokenizer(model_path)
    tok_path = out_dir / "tokenizer.json"
    cfg_path = out_dir / "tokenizer_config.json"
    write_text(tok_path, tok.to_str(pretty=False))
    write_text(cfg_path, json.dumps(tokenizer_config(model_path), ensure_ascii=False, indent=2))
    return tok_path, cfg_path


def compare_encodings(expected: Tokenizer, got: Tokenizer, lines: list[str]) -> list[int]:
    """Indices of `lines` that two loaded tokenizers (a `.model` and its export) encode to different ids.

    Special-token strings in the text (a literal "<s>") are encoded as text by both, as
    SentencePiece does; BOS/EOS are not added (see vikhr.tokenizer.load).
    """
    pairs = zip(expected.encode_batch(lines), got.encode_batch(lines), strict=True)
    return [i for i, (a, b) in enumerate(pairs) if a != b]
