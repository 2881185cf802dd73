"""Paths of the bundled sample data (see assets/README.md for provenance and licences)."""

import glob
import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
RU_SAMPLE = ASSETS / "corpus" / "ru-sample.jsonl.gz"
EN_SAMPLE = ASSETS / "corpus" / "en-sample.jsonl.gz"
MISTRAL_TOKENIZER = ASSETS / "tokenizers" / "mistral-7b-v0.1.model"
RU_SEED_CHATS = ASSETS / "sft" / "ru-seed-chats.jsonl"
# One small file per chat collection's layout (Saiga, ruFLAN, Veles, Nectar, Alpaca, OASST), as
# configs/sft-mix-tiny.yaml mixes them.
SFT_FORMATS = ASSETS / "sft" / "formats"
# The Vikhr paper's Table 6 (arXiv:2405.13929v1), in the layout `vikhr eval compare --reference` reads.
PAPER_TABLE6 = ASSETS / "eval" / "vikhr-paper-table6.csv"
# The example configs the docs name as configs/NAME.yaml (the repository's configs/ links here), so
# an installed vikhr has them too: `vikhr doctor` says where, a missing configs/NAME.yaml points here.
CONFIGS = ASSETS / "configs"

# How a config or a documented command names a bundled file: by its path in the repository.
CHECKOUT_PREFIX = "vikhr/assets/"


def bundled(path: str) -> str:
    """`path`, or the installed package's own file where `path` is a relative `vikhr/assets/...` path
    (a file or a glob) that names nothing from the current directory: a config or a command (every
    tokenizer path, `sft prepare --input`, `eval --bpc-data`, `eval compare --reference`) that names
    bundled files works outside a checkout (an installed vikhr, run from any directory) as it does at
    the repository's root."""
    in_checkout = os.path.normpath(path)  # `./vikhr/assets/x` names the same file
    if not in_checkout.startswith(CHECKOUT_PREFIX):
        return path
    if os.path.lexists(path) or glob.glob(path, recursive=True):
        return path
    packaged = str(ASSETS / in_checkout.removeprefix(CHECKOUT_PREFIX))
    # Found nowhere: the path as the user wrote it, so the error that follows names what they typed.
    return packaged if glob.glob(packaged, recursive=True) else path
