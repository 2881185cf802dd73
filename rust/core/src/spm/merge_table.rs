//! The merges of a BPE vocabulary as an open-addressing hash table
//! `(left id, right id) -> (rank, id)`, at most half full: a lookup is a multiply, a shift and
//! (almost always) one or two probes, with no string hashing.

use rustc_hash::FxHashMap;

#[derive(Debug, Clone)]
pub(super) struct MergeTable {
    /// `(key, value)`: key `left << 32 | right` (EMPTY_KEY when free), value `rank << 32 | id`.
    slots: Vec<(u64, u64)>,
    shift: u32,
}

const EMPTY_KEY: u64 = u64::MAX;

impl MergeTable {
    /// Every split of every vocabulary piece into two vocabulary pieces, valued by the rank
    /// (`ranks[id]`, >= 1) and id of the whole piece.
    pub(super) fn from_vocab(vocab: &FxHashMap<Box<[u8]>, u32>, ranks: &[u32]) -> Self {
        let mut pairs = Vec::new();
        for (piece, &id) in vocab {
            let s = std::str::from_utf8(piece).expect("pieces are UTF-8");
            for (k, _) in s.char_indices().skip(1) {
                if let (Some(&l), Some(&r)) = (vocab.get(&piece[..k]), vocab.get(&piece[k..])) {
                    pairs.push((l, r, ranks[id as usize], id));
                }
            }
        }
        Self::new(&pairs)
    }

    fn new(pairs: &[(u32, u32, u32, u32)]) -> Self {
        let bits = (pairs.len().max(1) * 2)
            .next_power_of_two()
            .trailing_zeros()
            .max(4);
        let mut t = MergeTable {
            slots: vec![(EMPTY_KEY, 0); 1 << bits],
            shift: 64 - bits,
        };
        let mask = t.slots.len() - 1;
        for &(l, r, rank, id) in pairs {
            let key = u64::from(l) << 32 | u64::from(r);
            let mut i = t.index(key);
            while t.slots[i].0 != EMPTY_KEY && t.slots[i].0 != key {
                i = (i + 1) & mask;
            }
            t.slots[i] = (key, u64::from(rank) << 32 | u64::from(id));
        }
        t
    }

    #[inline]
    fn index(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// `rank << 32 | id` of the merge of `l` and `r`, 0 when there is none (ranks are >= 1).
    #[inline(always)]
    pub(super) fn get(&self, l: u32, r: u32) -> u64 {
        let key = u64::from(l) << 32 | u64::from(r);
        let mask = self.slots.len() - 1;
        let mut i = self.index(key);
        loop {
            let (k, v) = self.slots[i];
            if k == key {
                return v;
            }
            if k == EMPTY_KEY {
                return 0;
            }
            i = (i + 1) & mask;
        }
    }
}
