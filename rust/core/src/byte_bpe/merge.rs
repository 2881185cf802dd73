//! The BPE model of a byte-level `tokenizer.json`, worked in raw bytes: every vocabulary string
//! is mapped back through GPT-2's byte-to-character table, so a word is merged from its own
//! bytes without building the byte-level string first.
//!
//! Merging follows the `tokenizers` crate's `Word::merge_all`: the adjacent pair with the lowest
//! merge rank merges first, the leftmost one on a tie. Words of at most [`SHORT_SYMBOLS`]
//! symbols are merged in fixed arrays: symbols stay in place (a merge unlinks its right symbol),
//! a linear scan finds the lowest rank, and only the two pairs next to a merge are looked up
//! again, through a per-thread cache of pair lookups (the first lookups of a word that miss it
//! are prefetched together). Longer words use a priority queue, as the crate does. With
//! `ignore_merges`, a word found whole in the vocabulary is that one id (a small filter answers
//! "not in the vocabulary" for most words without touching the large map).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

use crate::pair_table::PairTable;

/// No id (a byte missing from the vocabulary).
pub(super) const NO_ID: u32 = u32::MAX;
/// Words with at most this many initial symbols use the array BPE.
const SHORT_SYMBOLS: usize = 64;
/// No neighbour (in the array BPE's links).
const NO_LINK: u8 = u8::MAX;

/// GPT-2's `bytes_to_unicode`: the character each byte is written as in a byte-level vocabulary.
pub(super) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        table[b as usize] = if printable {
            b as char
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("below U+0200")
        };
    }
    table
}

/// Maps byte-level vocabulary strings back to the bytes they stand for.
pub(super) struct ByteDecoder {
    /// Byte of each character below U+0144 (the table's largest), or `None`.
    bytes: Vec<Option<u8>>,
}

impl ByteDecoder {
    pub(super) fn new() -> Self {
        let mut bytes = vec![None; 0x144];
        for (b, c) in byte_to_char().iter().enumerate() {
            bytes[*c as usize] = Some(b as u8);
        }
        ByteDecoder { bytes }
    }

    /// Write the bytes `s` stands for to `out` (cleared first); false when `s` has a character
    /// outside the byte alphabet (such a string can never be the result of merging bytes).
    pub(super) fn decode_into(&self, s: &str, out: &mut Vec<u8>) -> bool {
        out.clear();
        for c in s.chars() {
            match self.bytes.get(c as usize).copied().flatten() {
                Some(b) => out.push(b),
                None => return false,
            }
        }
        true
    }
}

/// A map from byte strings to ids. Keys of up to 15 bytes are packed with their length into one
/// `u128`, stored inline in the table: a lookup is one probe, not a chase through a pointer.
#[derive(Default, Clone)]
pub(super) struct BytesMap {
    short: FxHashMap<u128, u32>,
    long: FxHashMap<Box<[u8]>, u32>,
}

/// `bytes` and its length packed into a `u128`, when it has at most 15 bytes.
#[inline(always)]
fn packed(bytes: &[u8]) -> Option<u128> {
    (bytes.len() < 16).then(|| {
        let mut k = [0u8; 16];
        k[..bytes.len()].copy_from_slice(bytes);
        k[15] = bytes.len() as u8;
        u128::from_le_bytes(k)
    })
}

impl BytesMap {
    pub(super) fn with_capacity(n: usize) -> Self {
        BytesMap {
            short: FxHashMap::with_capacity_and_hasher(n, Default::default()),
            long: FxHashMap::default(),
        }
    }

    #[inline]
    pub(super) fn get(&self, bytes: &[u8]) -> Option<u32> {
        match packed(bytes) {
            Some(k) => self.short.get(&k).copied(),
            None => self.long.get(bytes).copied(),
        }
    }

    /// Insert (a key already present takes the new id).
    pub(super) fn insert(&mut self, bytes: &[u8], id: u32) {
        match packed(bytes) {
            Some(k) => self.short.insert(k, id),
            None => self.long.insert(bytes.into(), id),
        };
    }

    pub(super) fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.short.values().chain(self.long.values()).copied()
    }
}

/// The vocabulary by bytes, for `ignore_merges`, behind a one-bit-per-hash filter that stays in
/// the CPU's caches: most words that miss the word cache are not in the vocabulary, and the
/// filter says so without a wait for main memory.
pub(super) struct WholeWords {
    map: BytesMap,
    filter: Vec<u64>,
}

/// Bits of the filter: 2^21 (256 KiB), a few percent set for a vocabulary of 100k-200k.
const FILTER_BITS: u32 = 21;

#[inline(always)]
fn filter_bit(bytes: &[u8]) -> usize {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(bytes);
    (h.finish() >> (64 - FILTER_BITS)) as usize
}

impl WholeWords {
    pub(super) fn new(map: BytesMap) -> Self {
        let mut filter = vec![0u64; (1 << FILTER_BITS) / 64];
        let mut set = |word: &[u8]| {
            let bit = filter_bit(word);
            filter[bit / 64] |= 1 << (bit % 64);
        };
        for k in map.short.keys() {
            let b = k.to_le_bytes();
            set(&b[..b[15] as usize]);
        }
        map.long.keys().for_each(|k| set(k));
        WholeWords { map, filter }
    }

    #[inline]
    pub(super) fn get(&self, word: &[u8]) -> Option<u32> {
        let bit = filter_bit(word);
        if self.filter[bit / 64] >> (bit % 64) & 1 == 0 {
            return None;
        }
        self.map.get(word)
    }
}

/// `(left id, right id) -> (rank, merged id)` of the merges (`crate::pair_table`).
pub(super) struct MergeTable(PairTable);

impl MergeTable {
    /// The merges `(left, right, merged)` in rank order; a pair listed again takes the later
    /// rank, as the tokenizers crate's map does.
    pub(super) fn new(merges: &[(u32, u32, u32)]) -> Self {
        let values = merges
            .iter()
            .enumerate()
            .map(|(rank, &(l, r, id))| (l, r, (rank as u64 + 1) << 32 | u64::from(id)));
        MergeTable(PairTable::new(values))
    }

    /// Ask the CPU to bring the slot of the pair into its caches (a hint, no effect on results).
    #[inline(always)]
    fn prefetch(&self, l: u32, r: u32) {
        self.0.prefetch(l, r);
    }

    /// `(rank + 1) << 32 | merged id` of the pair, or `u64::MAX` when the pair never merges
    /// (so a smaller value is always a better merge).
    #[inline(always)]
    pub(super) fn get(&self, l: u32, r: u32) -> u64 {
        self.0.get_or(l, r, u64::MAX)
    }
}

/// The BPE model: byte ids, merges, and how words outside the byte alphabet are handled.
pub(super) struct Bpe {
    /// Id of each single byte (NO_ID when the vocabulary lacks it).
    pub(super) byte_ids: [u32; 256],
    /// Every byte has an id (true for every real byte-level vocabulary).
    pub(super) all_bytes_known: bool,
    /// The id a byte missing from the vocabulary becomes (else it is dropped, as the crate does).
    pub(super) unk: Option<u32>,
    /// Consecutive missing bytes become one `unk`.
    pub(super) fuse_unk: bool,
    pub(super) merges: MergeTable,
    /// `ignore_merges`: a word that is itself in the vocabulary is that one id.
    pub(super) whole_words: Option<WholeWords>,
}

/// Per-thread scratch space of the BPE.
#[derive(Default)]
pub(super) struct BpeScratch {
    pairs: PairCache,
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    ids: Vec<u32>,
}

/// A direct-mapped cache of merge-table lookups (1 MiB, about the size of an L2 cache): the
/// pairs a language's words are made of repeat, and a lookup in the large table is mostly a
/// wait for main memory.
#[derive(Default)]
struct PairCache {
    /// `(left << 32 | right, merge)`; key u64::MAX when empty.
    slots: Vec<(u64, u64)>,
}

const PAIR_CACHE_SLOTS: usize = 1 << 16;

impl PairCache {
    #[inline(always)]
    fn slot(key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as usize
    }

    /// Prefetch the large-table slots of the adjacent pairs of `ids` that this cache lacks, so
    /// that their lookups wait for memory together rather than one after another.
    #[inline]
    fn prefetch_pairs(&mut self, table: &MergeTable, ids: &[u32]) {
        if self.slots.is_empty() {
            self.slots = vec![(u64::MAX, 0); PAIR_CACHE_SLOTS];
        }
        for w in ids.windows(2) {
            let key = u64::from(w[0]) << 32 | u64::from(w[1]);
            if self.slots[Self::slot(key)].0 != key {
                table.prefetch(w[0], w[1]);
            }
        }
    }

    #[inline(always)]
    fn get(&mut self, table: &MergeTable, l: u32, r: u32) -> u64 {
        if self.slots.is_empty() {
            self.slots = vec![(u64::MAX, 0); PAIR_CACHE_SLOTS];
        }
        let key = u64::from(l) << 32 | u64::from(r);
        let slot = &mut self.slots[Self::slot(key)];
        if slot.0 != key {
            *slot = (key, table.get(l, r));
        }
        slot.1
    }
}

/// One symbol of the long-word BPE, linked to its neighbours (NONE at the ends).
#[derive(Clone, Copy)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

impl Bpe {
    /// Append the ids of `word` (raw bytes) to `out`.
    pub(super) fn encode_word(&self, word: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        if let Some(whole) = &self.whole_words {
            if let Some(id) = whole.get(word) {
                out.push(id);
                return;
            }
        }
        if word.len() <= SHORT_SYMBOLS && self.all_bytes_known {
            let mut ids = [0u32; SHORT_SYMBOLS];
            for (id, &b) in ids.iter_mut().zip(word) {
                *id = self.byte_ids[b as usize];
            }
            self.merge_short(&mut ids[..word.len()], &mut scratch.pairs, out);
            return;
        }
        let mut ids = std::mem::take(&mut scratch.ids);
        ids.clear();
        self.initial_symbols(word, &mut ids);
        if ids.len() <= SHORT_SYMBOLS {
            let mut short = [0u32; SHORT_SYMBOLS];
            short[..ids.len()].copy_from_slice(&ids);
            self.merge_short(&mut short[..ids.len()], &mut scratch.pairs, out);
        } else {
            self.merge_long(&ids, scratch, out);
        }
        scratch.ids = ids;
    }

    /// The symbols a word starts as: one per byte; a byte missing from the vocabulary becomes
    /// `unk` (one for a run with `fuse_unk`) or is dropped when there is no `unk`.
    fn initial_symbols(&self, word: &[u8], ids: &mut Vec<u32>) {
        let mut pending_unk = false;
        for &b in word {
            let id = self.byte_ids[b as usize];
            if id != NO_ID {
                ids.push(id);
                pending_unk = false;
            } else if let Some(unk) = self.unk {
                if !(pending_unk && self.fuse_unk) {
                    ids.push(unk);
                }
                pending_unk = true;
            }
        }
    }

    /// Merge the symbols `ids` (at most SHORT_SYMBOLS) in place and append the result.
    fn merge_short(&self, ids: &mut [u32], pairs: &mut PairCache, out: &mut Vec<u32>) {
        let n = ids.len();
        if n == 0 {
            return;
        }
        pairs.prefetch_pairs(&self.merges, ids);
        // Symbols stay where they start; a merged-away one is unlinked (`next`/`prev`, NO_LINK
        // at the ends), so a merge moves nothing. merges[k]: the merge of symbol k and the next
        // one (u64::MAX for none or for a removed symbol).
        let mut merges = [u64::MAX; SHORT_SYMBOLS];
        let (mut next, mut prev) = ([0u8; SHORT_SYMBOLS], [NO_LINK; SHORT_SYMBOLS]);
        for k in 0..n {
            next[k] = k as u8 + 1;
            if k > 0 {
                prev[k] = k as u8 - 1;
            }
        }
        for k in 0..n - 1 {
            merges[k] = pairs.get(&self.merges, ids[k], ids[k + 1]);
        }
        loop {
            // The lowest merge, the leftmost on a tie (positions are in text order).
            let (mut best, mut at) = (u64::MAX, 0);
            for (k, &m) in merges[..n - 1].iter().enumerate() {
                if m < best {
                    (best, at) = (m, k);
                }
            }
            if best == u64::MAX {
                break;
            }
            let right = next[at] as usize;
            ids[at] = best as u32;
            merges[right] = u64::MAX;
            let after = next[right] as usize;
            next[at] = after as u8;
            merges[at] = u64::MAX;
            if after < n {
                prev[after] = at as u8;
                merges[at] = pairs.get(&self.merges, ids[at], ids[after]);
            }
            if prev[at] != NO_LINK {
                let p = prev[at] as usize;
                merges[p] = pairs.get(&self.merges, ids[p], ids[at]);
            }
        }
        let mut k = 0;
        while k < n {
            out.push(ids[k]);
            k = next[k] as usize;
        }
    }

    /// Merge a long word with a priority queue of `(merge, position)`, as the crate does:
    /// entries made stale by an earlier merge are skipped when they come up.
    fn merge_long(&self, ids: &[u32], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        let syms = &mut scratch.syms;
        let heap = &mut scratch.heap;
        syms.clear();
        heap.clear();
        let n = ids.len() as u32;
        syms.extend(ids.iter().enumerate().map(|(k, &id)| Sym {
            id,
            prev: if k == 0 { NONE } else { k as u32 - 1 },
            next: if k as u32 + 1 == n {
                NONE
            } else {
                k as u32 + 1
            },
        }));
        for k in 0..ids.len().saturating_sub(1) {
            let m = self.merges.get(ids[k], ids[k + 1]);
            if m != u64::MAX {
                heap.push(Reverse((m, k as u32)));
            }
        }
        while let Some(Reverse((m, pos))) = heap.pop() {
            let left = syms[pos as usize];
            // Removed (merged into its left neighbour), last, or the pair has changed.
            if left.id == NONE || left.next == NONE {
                continue;
            }
            let right = syms[left.next as usize];
            if self.merges.get(left.id, right.id) != m {
                continue;
            }
            syms[pos as usize].id = m as u32;
            syms[pos as usize].next = right.next;
            syms[left.next as usize].id = NONE;
            if right.next != NONE {
                syms[right.next as usize].prev = pos;
                let m = self.merges.get(m as u32, syms[right.next as usize].id);
                if m != u64::MAX {
                    heap.push(Reverse((m, pos)));
                }
            }
            if left.prev != NONE {
                let m = self.merges.get(syms[left.prev as usize].id, m as u32);
                if m != u64::MAX {
                    heap.push(Reverse((m, left.prev)));
                }
            }
        }
        let mut k = 0;
        while k != NONE {
            out.push(syms[k as usize].id);
            k = syms[k as usize].next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_char();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xad], 'Ń');
        let d = ByteDecoder::new();
        let mut out = Vec::new();
        assert!(d.decode_into("ĠÐ¿", &mut out) && out == " п".as_bytes());
        assert!(d.decode_into("<s>", &mut out) && out == b"<s>");
        assert!(!d.decode_into("▁a", &mut out));
    }

    /// A model over the bytes a..e (ids 0..4) with random merges, and a word.
    fn model(merges: &[(u8, u8)]) -> Bpe {
        // Merged pieces get ids from 5 on; the merge list only uses byte ids, so each merge
        // is a distinct pair (later duplicates take the later rank, as in the crate).
        let mut byte_ids = [NO_ID; 256];
        for b in 0..5u8 {
            byte_ids[(b'a' + b) as usize] = b as u32;
        }
        let mut list = Vec::new();
        let mut next = 5;
        let mut seen: FxHashMap<(u32, u32), u32> = Default::default();
        for &(l, r) in merges {
            let key = (l as u32 % next, r as u32 % next);
            let id = *seen.entry(key).or_insert_with(|| {
                next += 1;
                next - 1
            });
            list.push((key.0, key.1, id));
        }
        Bpe {
            byte_ids,
            all_bytes_known: false,
            unk: None,
            fuse_unk: false,
            merges: MergeTable::new(&list),
            whole_words: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// The array BPE and the queue BPE give the same ids.
        #[test]
        fn short_and_long_merges_agree(merges in proptest::collection::vec((0u8..40, 0u8..40), 0..60), word in "[a-e]{1,64}") {
            let bpe = model(&merges);
            let ids: Vec<u32> = word.bytes().map(|b| bpe.byte_ids[b as usize]).collect();
            let (mut short, mut long) = (Vec::new(), Vec::new());
            let mut arr = ids.clone();
            bpe.merge_short(&mut arr, &mut PairCache::default(), &mut short);
            bpe.merge_long(&ids, &mut BpeScratch::default(), &mut long);
            prop_assert_eq!(short, long);
        }
    }

    #[test]
    fn ignore_merges_takes_whole_words_from_the_vocabulary() {
        let mut bpe = model(&[]);
        let mut vocab = BytesMap::with_capacity(4);
        vocab.insert(b"ab", 7);
        let long_word = [b'c'; 40];
        vocab.insert(&long_word, 8);
        bpe.all_bytes_known = true;
        bpe.whole_words = Some(WholeWords::new(vocab));
        let mut out = Vec::new();
        for word in [&b"ab"[..], b"abc", &long_word] {
            bpe.encode_word(word, &mut BpeScratch::default(), &mut out);
        }
        assert_eq!(out[..4], [7, 0, 1, 2]);
        assert_eq!(out[4..], [8]);
    }

    #[test]
    fn missing_bytes_become_unk_or_vanish() {
        let mut bpe = model(&[]);
        let mut out = Vec::new();
        bpe.encode_word(b"axyb", &mut BpeScratch::default(), &mut out);
        assert_eq!(out, [0, 1]);
        bpe.unk = Some(99);
        out.clear();
        bpe.encode_word(b"axyb", &mut BpeScratch::default(), &mut out);
        assert_eq!(out, [0, 99, 99, 1]);
        bpe.fuse_unk = true;
        out.clear();
        bpe.encode_word(b"axyb", &mut BpeScratch::default(), &mut out);
        assert_eq!(out, [0, 99, 1]);
    }
}
