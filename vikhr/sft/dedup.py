"""Duplicate chats: exact (a hash of the normalised text) and near (MinHash + LSH over prompts).

Both work on arrays filled while the chats stream by and decided at the end, so memory holds a few
numbers per chat, never the chats: an 8-byte hash for the exact test and `bands` 8-byte band keys
for the near test (700k chats, 9 bands: about 56 MB).

Normalisation: NFKC, case folded, every run of non-letters/digits a single space.

Near duplicates: word 3-gram shingles of the normalised prompt, a MinHash signature of `num_perm`
multiply-shift hashes (vectorised over a batch of prompts), cut into `bands` bands of `rows` values
chosen for the Jaccard `threshold` as datasketch's MinHashLSH chooses them (the least weighted sum
of false-positive and false-negative probability). A prompt sharing any band with an earlier one is
a near duplicate of it, unless both come from the same record (the ranked answers of one Nectar
prompt); the earliest of each bucket is kept. tools/bench_sft_dedup.py compares this with
datasketch's MinHash + MinHashLSH.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(r"[^\W_]+")
SHINGLE_WORDS = 3
_U32 = np.uint64(0xFFFFFFFF)
SHINGLES_AT_ONCE = 1 << 15  # of the signature matrix computed at once: 32 MiB at 128 permutations


def normalise(text: str) -> str:
    """NFKC, case folded, runs of non-letters/digits → one space, stripped."""
    return " ".join(normalised_words(text))


def normalised_words(text: str) -> list[str]:
    """The words of `normalise`: the runs of letters/digits of the NFKC, case-folded text."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def exact_key(text: str) -> int:
    """A 64-bit hash of the normalised text (equal for texts that differ in case, spacing, punctuation)."""
    return int.from_bytes(hashlib.blake2b(normalise(text).encode(), digest_size=8).digest(), "little")


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm whose S-curve 1-(1-s^rows)^bands best separates
    Jaccard similarities above `threshold` from those below (equal weights, as datasketch)."""
    s_low = np.linspace(0.0, threshold, 200)
    s_high = np.linspace(threshold, 1.0, 200)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_pos = np.trapezoid(1 - (1 - s_low**rows) ** bands, s_low)
            false_neg = np.trapezoid((1 - s_high**rows) ** bands, s_high)
            if false_pos + false_neg < best_error:
                best, best_error = (bands, rows), false_pos + false_neg
    return best


@dataclass
class MinHasher:
    """MinHash signatures and LSH band keys of texts; the same seed gives the same numbers."""

    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    bands: int = field(init=False)
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._mul = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        self._add = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        self._word_mul = rng.integers(1, 2**63, size=SHINGLE_WORDS, dtype=np.uint64) | np.uint64(1)
        self.bands, self.rows = lsh_params(self.threshold, self.num_perm)
        self._band_mul = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of the word 3-grams of each normalised text (one for a text of fewer words),
        all texts' in one array, and where each text's start."""
        words = [normalised_words(t) or [t] for t in texts]
        counts = np.array([len(w) for w in words])
        flat = np.fromiter(
            (zlib.crc32(w.encode()) for ws in words for w in ws), dtype=np.uint64, count=int(counts.sum())
        )
        n = SHINGLE_WORDS
        padded = np.concatenate([flat, np.zeros(n - 1, dtype=np.uint64)])
        # The 3-gram starting at every word (wraps mod 2^64); those running past their text are dropped.
        grams = sum(padded[i : i + len(flat)] * self._word_mul[i] for i in range(n))
        word_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        position = np.arange(len(flat)) - np.repeat(word_start, counts)
        per_text = np.maximum(counts - n + 1, 1)
        short = counts < n  # one shingle: all of its words
        keep = position < np.repeat(per_text, counts)
        if short.any():
            for t in np.flatnonzero(short):
                w = flat[word_start[t] : word_start[t] + counts[t]]
                grams[word_start[t]] = (w * self._word_mul[: len(w)]).sum(dtype=np.uint64)
        starts = np.concatenate([[0], np.cumsum(per_text)[:-1]])
        return grams[keep], starts

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        flat, starts = self.shingles(texts)
        ends = np.append(starts[1:], len(flat))
        out = np.full((len(texts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        # The num_perm × shingles matrix a piece at a time: a batch of long prompts (or one chat of
        # thousands of turns) would otherwise need num_perm × 8 bytes per word of it at once.
        for lo in range(0, len(flat), SHINGLES_AT_ONCE):
            hi = min(lo + SHINGLES_AT_ONCE, len(flat))
            first, last = np.searchsorted(ends, lo, side="right"), np.searchsorted(starts, hi)
            # Multiply-shift: the high 32 bits of mul·h + add (mod 2^64) for each permutation.
            values = (self._mul[:, None] * flat[None, lo:hi] + self._add[:, None]) >> np.uint64(32)
            pieces = np.maximum(starts[first:last], lo) - lo  # each text's part of this piece
            mins = np.minimum.reduceat(values & _U32, pieces, axis=1).T.astype(np.uint32)
            out[first:last] = np.minimum(out[first:last], mins)
        return out

    def band_keys(self, texts: list[str]) -> np.ndarray:
        """(len(texts), bands) uint64: one hash per band of each signature."""
        sig = self.signatures(texts).astype(np.uint64)
        used = sig[:, : self.bands * self.rows].reshape(len(texts), self.bands, self.rows)
        return (used * self._band_mul).sum(axis=2, dtype=np.uint64)


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """For each element, the index of the first element with its key (itself when it is the first)."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def near_duplicates(band_keys: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each row, the earliest row of another group it shares a band key with (-1: none)."""
    n = len(band_keys)
    matched = np.full(n, -1, dtype=np.int64)
    index = np.arange(n)
    for band in range(band_keys.shape[1]):
        column = band_keys[:, band]
        order = np.lexsort((index, column))  # by key, then by position
        sorted_keys = column[order]
        run_start = np.ones(n, dtype=bool)
        run_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first = order[np.maximum.accumulate(np.where(run_start, np.arange(n), 0))]
        found = (groups[order] != groups[first]) & ((matched[order] < 0) | (first < matched[order]))
        matched[order[found]] = first[found]
    return matched
