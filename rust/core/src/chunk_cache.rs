//! A bounded map from short byte strings (chunks of text) to token ids, built for the encoder's
//! hot path, where a lookup is mostly a wait for memory:
//! * an entry is one 64-byte cache line holding its key (up to 24 bytes) and ids (up to 8)
//!   inline; longer ones live in two arenas (so an insert never allocates per entry);
//! * a small direct-mapped "hot" table that fits in the L2 cache sits in front of the large
//!   open-addressing table; entries found in the large one are copied into it, so the frequent
//!   chunks (most of a text) are found without touching main memory.
//!
//! When the large table is full, both are emptied (keeping their allocations): memory is bounded.

use std::hash::Hasher;

use rustc_hash::FxHasher;

/// Longest key (in bytes) the cache accepts.
pub const MAX_KEY: usize = 96;
const INLINE_KEY: usize = 24;
const INLINE_IDS: usize = 8;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot {
    /// 32-bit hash of the key (also chooses the slot).
    hash: u32,
    /// 0 marks an empty slot (keys are never empty).
    key_len: u8,
    val_len: u8,
    /// The key, zero-padded, when it fits; else its offset in `keys` (first 4 bytes).
    key: [u8; INLINE_KEY],
    /// The ids when they fit; else `vals[0]` is their offset in `vals`.
    vals: [u32; INLINE_IDS],
}

const EMPTY: Slot = Slot {
    hash: 0,
    key_len: 0,
    val_len: 0,
    key: [0; INLINE_KEY],
    vals: [0; INLINE_IDS],
};

pub struct ChunkCache {
    hot: Vec<Slot>,
    slots: Vec<Slot>,
    keys: Vec<u8>,
    vals: Vec<u32>,
    len: usize,
    max_slots: usize,
}

/// Default size of a full large table: 2^19 slots (32 MiB), at most 3/4 of them used.
const DEFAULT_MAX_SLOTS: usize = 1 << 19;
/// The hot table: 2^12 slots (256 KiB).
const HOT_SLOTS: usize = 1 << 12;
const FIRST_SLOTS: usize = 1 << 12;

impl Default for ChunkCache {
    fn default() -> Self {
        Self::with_max_slots(DEFAULT_MAX_SLOTS)
    }
}

#[inline]
pub fn hash_key(key: &[u8]) -> u32 {
    let mut h = FxHasher::default();
    h.write(key);
    h.write_usize(key.len());
    (h.finish() >> 32) as u32
}

/// `key` zero-padded to the inline width (only called for keys that fit).
#[inline(always)]
fn padded(key: &[u8]) -> [u8; INLINE_KEY] {
    let mut k = [0u8; INLINE_KEY];
    k[..key.len()].copy_from_slice(key);
    k
}

impl ChunkCache {
    /// A cache of at most `max_slots` (a power of two) slots, 3/4 of which can hold entries.
    pub fn with_max_slots(max_slots: usize) -> Self {
        assert!(max_slots.is_power_of_two() && max_slots >= 4);
        ChunkCache {
            hot: Vec::new(),
            slots: Vec::new(),
            keys: Vec::new(),
            vals: Vec::new(),
            len: 0,
            max_slots,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Drop every entry (the allocations are kept).
    fn clear(&mut self) {
        self.hot.fill(EMPTY);
        self.slots.fill(EMPTY);
        self.keys.clear();
        self.vals.clear();
        self.len = 0;
    }

    #[inline(always)]
    fn matches(&self, s: &Slot, key: &[u8], hash: u32, inline: &[u8; INLINE_KEY]) -> bool {
        if s.hash != hash || s.key_len as usize != key.len() {
            return false;
        }
        if key.len() <= INLINE_KEY {
            s.key == *inline
        } else {
            let k = u32::from_le_bytes(s.key[..4].try_into().unwrap()) as usize;
            &self.keys[k..k + key.len()] == key
        }
    }

    #[inline(always)]
    fn ids<'a>(&'a self, s: &'a Slot) -> &'a [u32] {
        let n = s.val_len as usize;
        if n <= INLINE_IDS {
            &s.vals[..n]
        } else {
            let v = s.vals[0] as usize;
            &self.vals[v..v + n]
        }
    }

    /// Ask the CPU to bring the slots `hash` would occupy into its caches (a hint, no effect on
    /// results).
    #[inline(always)]
    pub fn prefetch(&self, hash: u32) {
        #[cfg(target_arch = "x86_64")]
        if !self.slots.is_empty() {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // Only the large table: the hot one mostly sits in the L2 cache already.
            let big = &self.slots[hash as usize & (self.slots.len() - 1)] as *const Slot;
            // SAFETY: prefetching is a hint; the pointer is in bounds and SSE is baseline on
            // x86-64.
            unsafe { _mm_prefetch(big as *const i8, _MM_HINT_T0) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// The ids stored for `key` (whose hash is `hash`, see [`hash_key`]).
    #[inline]
    pub fn get(&mut self, key: &[u8], hash: u32) -> Option<&[u32]> {
        if self.slots.is_empty() {
            return None;
        }
        let inline = if key.len() <= INLINE_KEY {
            padded(key)
        } else {
            [0; INLINE_KEY]
        };
        let h = hash as usize & (HOT_SLOTS - 1);
        if self.matches(&self.hot[h], key, hash, &inline) {
            return Some(self.ids(&self.hot[h]));
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.key_len == 0 {
                return None;
            }
            if self.matches(s, key, hash, &inline) {
                self.hot[h] = *s;
                return Some(self.ids(&self.hot[h]));
            }
            i = (i + 1) & mask;
        }
    }

    /// Store `ids` for `key` (absent from the cache); a key longer than [`MAX_KEY`] or more than
    /// 255 ids are not stored.
    pub fn insert(&mut self, key: &[u8], hash: u32, ids: &[u32]) {
        if key.is_empty() || key.len() > MAX_KEY || ids.len() > u8::MAX as usize {
            return;
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            if self.slots.len() < self.max_slots {
                self.grow();
            } else {
                self.clear();
            }
        }
        let mut slot = Slot {
            hash,
            key_len: key.len() as u8,
            val_len: ids.len() as u8,
            ..EMPTY
        };
        if key.len() <= INLINE_KEY {
            slot.key = padded(key);
        } else {
            slot.key[..4].copy_from_slice(&(self.keys.len() as u32).to_le_bytes());
            self.keys.extend_from_slice(key);
        }
        if ids.len() <= INLINE_IDS {
            slot.vals[..ids.len()].copy_from_slice(ids);
        } else {
            slot.vals[0] = self.vals.len() as u32;
            self.vals.extend_from_slice(ids);
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i].key_len != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        self.hot[hash as usize & (HOT_SLOTS - 1)] = slot;
        self.len += 1;
    }

    fn grow(&mut self) {
        if self.hot.is_empty() {
            self.hot = vec![EMPTY; HOT_SLOTS];
        }
        let n = (self.slots.len() * 2).max(FIRST_SLOTS).min(self.max_slots);
        let old = std::mem::replace(&mut self.slots, alloc_slots(n));
        let mask = n - 1;
        for s in old.into_iter().filter(|s| s.key_len != 0) {
            let mut i = s.hash as usize & mask;
            while self.slots[i].key_len != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }
}

/// `n` empty slots; a large table asks for transparent huge pages first (random probes into
/// 4 KiB pages would each miss the TLB).
fn alloc_slots(n: usize) -> Vec<Slot> {
    let mut v: Vec<Slot> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    if n * size_of::<Slot>() >= 4 << 20 {
        // madvise wants a page-aligned start; the allocation may begin inside a page.
        let (start, end) = (
            v.as_ptr() as usize,
            v.as_ptr() as usize + n * size_of::<Slot>(),
        );
        let page_start = (start + 4095) & !4095;
        if end > page_start {
            // SAFETY: advice on memory this Vec owns (nothing is read or written); failure is
            // harmless.
            unsafe {
                libc::madvise(
                    page_start as *mut libc::c_void,
                    (end - page_start) & !4095,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    v.resize(n, EMPTY);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The cache answers like a HashMap for every key it still holds (short and long keys,
        /// few and many ids), and forgets only by emptying itself when full.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(("[a-c]{1,4}|[a-z]{20,40}", proptest::collection::vec(0u32..9, 0..12)), 0..300)) {
            let mut cache = ChunkCache::with_max_slots(16);
            let mut model: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
            for (k, v) in &ops {
                let h = hash_key(k.as_bytes());
                match cache.get(k.as_bytes(), h) {
                    Some(got) => prop_assert_eq!(Some(&got.to_vec()), model.get(k.as_bytes())),
                    None => {
                        let before = cache.len();
                        cache.insert(k.as_bytes(), h, v);
                        if cache.len() <= before {
                            model.clear();
                        }
                        model.insert(k.as_bytes().to_vec(), v.clone());
                        prop_assert_eq!(cache.len(), model.len());
                    }
                }
                prop_assert!(cache.len() <= 12);
            }
            for (k, v) in &model {
                prop_assert_eq!(cache.get(k, hash_key(k)), Some(&v[..]));
            }
        }
    }
}
