//! A BPE vocabulary's merges as an open-addressing hash table `(left id, right id) -> value`, at
//! most half full: a lookup is a multiply, a shift and (almost always) one or two probes, with
//! no string hashing. Both encoders use it (`spm`, `byte_bpe`), each with its own value layout.

#[derive(Debug, Clone)]
pub(crate) struct PairTable {
    /// `(key, value)`: key `left << 32 | right`, EMPTY_KEY when free.
    slots: Vec<(u64, u64)>,
    shift: u32,
}

const EMPTY_KEY: u64 = u64::MAX;

impl PairTable {
    /// The table of `(left, right, value)`; a pair listed again keeps its last value.
    pub(crate) fn new(pairs: impl ExactSizeIterator<Item = (u32, u32, u64)>) -> Self {
        let bits = (pairs.len().max(1) * 2)
            .next_power_of_two()
            .trailing_zeros()
            .max(4);
        let mut t = PairTable {
            slots: vec![(EMPTY_KEY, 0); 1 << bits],
            shift: 64 - bits,
        };
        let mask = t.slots.len() - 1;
        for (l, r, value) in pairs {
            let key = u64::from(l) << 32 | u64::from(r);
            let mut i = t.index(key);
            while t.slots[i].0 != EMPTY_KEY && t.slots[i].0 != key {
                i = (i + 1) & mask;
            }
            t.slots[i] = (key, value);
        }
        t
    }

    #[inline(always)]
    fn index(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The value of the pair, or `missing` when the table does not hold it.
    #[inline(always)]
    pub(crate) fn get_or(&self, l: u32, r: u32, missing: u64) -> u64 {
        let key = u64::from(l) << 32 | u64::from(r);
        let mask = self.slots.len() - 1;
        let mut i = self.index(key);
        loop {
            let (k, v) = self.slots[i];
            if k == key {
                return v;
            }
            if k == EMPTY_KEY {
                return missing;
            }
            i = (i + 1) & mask;
        }
    }

    /// Ask the CPU to bring the slot of the pair into its caches (a hint, no effect on results).
    #[inline(always)]
    pub(crate) fn prefetch(&self, l: u32, r: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let slot = &self.slots[self.index(u64::from(l) << 32 | u64::from(r))] as *const _;
            // SAFETY: prefetching is a hint; the pointer is in bounds and SSE is baseline on
            // x86-64.
            unsafe { _mm_prefetch(slot as *const i8, _MM_HINT_T0) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (l, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_pair_and_only_those() {
        let pairs: Vec<(u32, u32, u64)> = (0..1000u32)
            .map(|i| (i, i.wrapping_mul(7919) % 1000, u64::from(i) + 1))
            .collect();
        let t = PairTable::new(pairs.iter().copied());
        for &(l, r, v) in &pairs {
            assert_eq!(t.get_or(l, r, 0), v);
        }
        assert_eq!(t.get_or(5000, 1, 0), 0);
        assert_eq!(t.get_or(1, 5000, u64::MAX), u64::MAX);
        // A pair listed again keeps its last value.
        let t = PairTable::new([(1, 2, 10), (1, 2, 20)].into_iter());
        assert_eq!(t.get_or(1, 2, 0), 20);
        assert_eq!(PairTable::new(std::iter::empty()).get_or(0, 0, 7), 7);
    }
}
