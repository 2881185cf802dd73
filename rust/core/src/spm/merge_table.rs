//! The merges of a SentencePiece BPE vocabulary: every split of a piece into two pieces,
//! valued by the whole piece's rank and id.

use rustc_hash::FxHashMap;

use crate::pair_table::PairTable;

#[derive(Debug, Clone)]
pub(super) struct MergeTable(PairTable);

impl MergeTable {
    /// Every split of every vocabulary piece into two vocabulary pieces, valued by the rank
    /// (`ranks[id]`, >= 1) and id of the whole piece.
    pub(super) fn from_vocab(vocab: &FxHashMap<Box<[u8]>, u32>, ranks: &[u32]) -> Self {
        let mut pairs = Vec::new();
        for (piece, &id) in vocab {
            let s = std::str::from_utf8(piece).expect("pieces are UTF-8");
            for (k, _) in s.char_indices().skip(1) {
                if let (Some(&l), Some(&r)) = (vocab.get(&piece[..k]), vocab.get(&piece[k..])) {
                    pairs.push((l, r, u64::from(ranks[id as usize]) << 32 | u64::from(id)));
                }
            }
        }
        MergeTable(PairTable::new(pairs.into_iter()))
    }

    /// `rank << 32 | id` of the merge of `l` and `r`, 0 when there is none (ranks are >= 1).
    #[inline(always)]
    pub(super) fn get(&self, l: u32, r: u32) -> u64 {
        self.0.get_or(l, r, 0)
    }
}
