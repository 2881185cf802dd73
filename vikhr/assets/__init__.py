"""Paths of the bundled sample data (see assets/README.md for provenance and licences)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
RU_SAMPLE = ASSETS / "corpus" / "ru-sample.jsonl.gz"
EN_SAMPLE = ASSETS / "corpus" / "en-sample.jsonl.gz"
MISTRAL_TOKENIZER = ASSETS / "tokenizers" / "mistral-7b-v0.1.model"
RU_SEED_CHATS = ASSETS / "sft" / "ru-seed-chats.jsonl"
# The Vikhr paper's Table 6 (arXiv:2405.13929v1), in the layout `vikhr eval compare --reference` reads.
PAPER_TABLE6 = ASSETS / "eval" / "vikhr-paper-table6.csv"
# The example configs the docs name as configs/NAME.yaml (the repository's configs/ links here), so
# an installed vikhr has them too: `vikhr doctor` says where, a missing configs/NAME.yaml points here.
CONFIGS = ASSETS / "configs"
