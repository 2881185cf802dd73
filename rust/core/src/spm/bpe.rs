//! BPE of one chunk: the highest-ranked adjacent pair merges first, the leftmost on a tie, as in
//! sentencepiece's `bpe_model.cc`. Short chunks are merged in fixed arrays scanned linearly
//! ([`SpmModel::bpe_short`]), longer ones with sentencepiece's agenda, a priority queue with lazy
//! deletion ([`SpmModel::bpe_long`]); both give the same ids.

use std::collections::BinaryHeap;

use rustc_hash::{FxHashMap, FxHashSet};

use super::merge_table::MergeTable;
use super::{utf8_len, PieceType, SpmError, NO_ID};

/// Chunks with at most this many characters use the linear-scan BPE.
const LINEAR_MAX_SYMBOLS: usize = 48;

/// The vocabulary side of a model: pieces by string and by id pair, and how ids are emitted.
#[derive(Debug, Clone)]
pub(super) struct Bpe {
    types: Vec<PieceType>,
    /// NORMAL, USER_DEFINED and UNUSED pieces (sentencepiece's `pieces_`).
    pub(super) vocab: FxHashMap<Box<[u8]>, u32>,
    /// CONTROL, UNKNOWN and BYTE pieces (sentencepiece's `reserved_`).
    reserved: FxHashMap<Box<[u8]>, u32>,
    /// `(left id, right id)` -> `(rank, id)` of the piece `left ++ right`, for every split of
    /// every vocabulary piece into two vocabulary pieces: merges without hashing strings.
    merges: MergeTable,
    /// Rank of each piece's score among all distinct scores (1 = lowest): comparing ranks
    /// orders merges exactly as comparing scores does, ties included.
    ranks: Vec<u32>,
    /// Vocabulary id of each single-character piece of the Basic Multilingual Plane (or NO_ID).
    bmp_ids: Vec<u32>,
    pub(super) byte_ids: Option<[u32; 256]>,
    pub(super) unk_id: u32,
}

/// A set of pieces, as UTF-8 bytes.
pub(super) type PieceSet = FxHashSet<Box<[u8]>>;

/// Per-thread scratch space of the agenda BPE.
#[derive(Default)]
pub(super) struct BpeScratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Candidate>,
}

/// Rank of each score among the distinct scores (1 = lowest).
fn score_ranks(scores: &[f32]) -> Vec<u32> {
    let mut distinct: Vec<f32> = scores.to_vec();
    distinct.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    distinct.dedup_by(|a, b| a == b);
    scores
        .iter()
        .map(|s| distinct.partition_point(|d| d < s) as u32 + 1)
        .collect()
}

/// The single-character pieces of the Basic Multilingual Plane, indexed by code point.
fn bmp_ids(vocab: &FxHashMap<Box<[u8]>, u32>) -> Vec<u32> {
    let mut ids = vec![NO_ID; 0x10000];
    for (piece, &id) in vocab {
        let s = std::str::from_utf8(piece).expect("pieces are UTF-8");
        let mut chars = s.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            if (c as u32) < 0x10000 {
                ids[c as usize] = id;
            }
        }
    }
    ids
}

/// One symbol of the agenda BPE: `s[start..end]`, linked to its neighbours.
#[derive(Debug, Clone, Copy)]
struct Sym {
    start: u32,
    end: u32,
    prev: i32,
    next: i32,
    /// Vocabulary id of the symbol's piece, or NO_ID (a character outside the vocabulary).
    id: u32,
}

/// A possible merge on the agenda.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    rank: u32,
    left: u32,
    right: u32,
    size: u32,
    id: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    /// Higher rank (score) first; on a tie the leftmost pair first (sentencepiece's SymbolPairComparator).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// `(start, mid, end)` of a merge into an UNUSED piece, to split it again when emitting.
type UnusedMerge = (u32, u32, u32);

impl Bpe {
    /// The vocabulary of `pieces` (with their types and scores), and its USER_DEFINED pieces.
    pub(super) fn new(
        pieces: &[String],
        types: Vec<PieceType>,
        scores: &[f32],
        byte_fallback: bool,
    ) -> Result<(Self, PieceSet), SpmError> {
        let mut vocab = FxHashMap::default();
        let mut reserved = FxHashMap::default();
        let mut user_defined = FxHashSet::default();
        let mut byte_ids = [u32::MAX; 256];
        let mut unk_id = None;
        for (i, (p, t)) in pieces.iter().zip(&types).enumerate() {
            let key: Box<[u8]> = p.as_bytes().into();
            let normal = matches!(
                t,
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused
            );
            let table = if normal { &mut vocab } else { &mut reserved };
            if table.insert(key.clone(), i as u32).is_some() {
                return Err(SpmError::Model(format!("piece {p:?} appears twice")));
            }
            match t {
                PieceType::UserDefined => {
                    user_defined.insert(key);
                }
                PieceType::Unknown => unk_id = Some(i as u32),
                PieceType::Byte => {
                    let b = p
                        .strip_prefix("<0x")
                        .and_then(|s| s.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| SpmError::Model(format!("bad byte piece {p:?}")))?;
                    byte_ids[b as usize] = i as u32;
                }
                _ => {}
            }
        }
        let unk_id =
            unk_id.ok_or_else(|| SpmError::Model("the model has no UNKNOWN piece".into()))?;
        let byte_ids = if byte_fallback {
            if byte_ids.contains(&u32::MAX) {
                return Err(SpmError::Model(
                    "byte_fallback is on but some <0xXX> pieces are missing".into(),
                ));
            }
            Some(byte_ids)
        } else {
            None
        };
        let ranks = score_ranks(scores);
        let bpe = Bpe {
            merges: MergeTable::from_vocab(&vocab, &ranks),
            bmp_ids: bmp_ids(&vocab),
            types,
            vocab,
            reserved,
            ranks,
            byte_ids,
            unk_id,
        };
        Ok((bpe, user_defined))
    }

    /// The id of a whole piece; the UNKNOWN id when there is no such piece.
    pub(super) fn piece_to_id(&self, piece: &[u8]) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.vocab.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// The ids of the chunk `s` (normalized text), appended to `out`.
    pub(super) fn bpe(&self, s: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        if !self.bpe_short(s, out) {
            self.bpe_long(s, scratch, out);
        }
    }

    /// `rank << 32 | id` of the piece made of the adjacent symbols `s[start..mid]` (id `left`)
    /// and `s[mid..end]` (id `right`); 0 when it is not in the vocabulary.
    #[inline(always)]
    fn merge_of(&self, s: &[u8], left: u32, right: u32, start: u32, end: u32) -> u64 {
        if left != NO_ID && right != NO_ID {
            self.merges.get(left, right)
        } else {
            self.merge_by_string(&s[start as usize..end as usize])
        }
    }

    /// A character outside the vocabulary: only the string can say (normally nothing).
    #[cold]
    #[inline(never)]
    fn merge_by_string(&self, piece: &[u8]) -> u64 {
        match self.vocab.get(piece) {
            Some(&id) => u64::from(self.ranks[id as usize]) << 32 | u64::from(id),
            None => 0,
        }
    }

    /// BPE of a chunk of at most LINEAR_MAX_SYMBOLS characters, in fixed arrays that shrink as
    /// symbols merge, scanning them for the best pair (highest rank, then leftmost). Returns
    /// false, having written nothing, for a longer chunk.
    pub(super) fn bpe_short(&self, s: &[u8], out: &mut Vec<u32>) -> bool {
        const N: usize = LINEAR_MAX_SYMBOLS;
        // Symbol i is s[st[i]..st[i + 1]] with vocabulary id ids[i] (or NO_ID).
        let mut st = [0u32; N + 1];
        let mut ids = [0u32; N];
        let mut n = 0;
        let mut pos = 0;
        while pos < s.len() {
            if n == N {
                return false;
            }
            let len = utf8_len(s[pos]);
            st[n] = pos as u32;
            ids[n] = self.char_id(&s[pos..pos + len]);
            n += 1;
            pos += len;
        }
        st[n] = s.len() as u32;
        // merge[i]: the merge of symbols i and i + 1, `rank << 32 | id` (0: none).
        let mut merge = [0u64; N];
        for i in 0..n.saturating_sub(1) {
            merge[i] = self.merge_of(s, ids[i], ids[i + 1], st[i], st[i + 2]);
        }
        let mut unused: Vec<UnusedMerge> = Vec::new();
        while n > 1 {
            // Compare ranks only: on equal ranks the leftmost pair wins.
            let (mut best, mut l) = (0u64, 0usize);
            for (i, &m) in merge[..n - 1].iter().enumerate() {
                if m >> 32 > best {
                    best = m >> 32;
                    l = i;
                }
            }
            if best == 0 {
                break;
            }
            let id = merge[l] as u32;
            if self.types[id as usize] == PieceType::Unused {
                unused.push((st[l], st[l + 1], st[l + 2]));
            }
            // Symbol l absorbs symbol l + 1.
            ids[l] = id;
            ids.copy_within(l + 2..n, l + 1);
            st.copy_within(l + 2..=n, l + 1);
            if l + 2 < n {
                merge.copy_within(l + 2..n - 1, l + 1);
            }
            n -= 1;
            if l + 1 < n {
                merge[l] = self.merge_of(s, ids[l], ids[l + 1], st[l], st[l + 2]);
            }
            if l > 0 {
                merge[l - 1] = self.merge_of(s, ids[l - 1], ids[l], st[l - 1], st[l + 1]);
            }
        }
        for i in 0..n {
            let id = ids[i];
            if id != NO_ID && self.types[id as usize] != PieceType::Unused {
                out.push(id);
            } else {
                self.emit(s, st[i] as usize, st[i + 1] as usize, &unused, out);
            }
        }
        true
    }

    /// BPE of a chunk of any length with sentencepiece's agenda (see [`Self::bpe_heap`]).
    pub(super) fn bpe_long(&self, s: &[u8], scratch: &mut BpeScratch, out: &mut Vec<u32>) {
        let syms = &mut scratch.syms;
        syms.clear();
        let mut pos = 0usize;
        while pos < s.len() {
            let len = utf8_len(s[pos]);
            let idx = syms.len() as i32;
            syms.push(Sym {
                start: pos as u32,
                end: (pos + len) as u32,
                prev: idx - 1,
                next: if pos + len < s.len() { idx + 1 } else { -1 },
                id: self.char_id(&s[pos..pos + len]),
            });
            pos += len;
        }
        let mut unused: Vec<UnusedMerge> = Vec::new();
        self.bpe_heap(s, syms, &mut scratch.heap, &mut unused);
        let mut i = if syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let sym = syms[i as usize];
            if sym.id != NO_ID && self.types[sym.id as usize] != PieceType::Unused {
                out.push(sym.id);
            } else {
                self.emit(s, sym.start as usize, sym.end as usize, &unused, out);
            }
            i = sym.next;
        }
    }

    /// sentencepiece's agenda-based BPE (a priority queue with lazy deletion) for long chunks.
    fn bpe_heap(
        &self,
        s: &[u8],
        syms: &mut [Sym],
        heap: &mut BinaryHeap<Candidate>,
        unused: &mut Vec<UnusedMerge>,
    ) {
        heap.clear();
        let push = |heap: &mut BinaryHeap<Candidate>, syms: &[Sym], l: i32, r: i32| {
            if l < 0 || r < 0 {
                return;
            }
            let (a, b) = (&syms[l as usize], &syms[r as usize]);
            let merge = self.merge_of(s, a.id, b.id, a.start, b.end);
            if merge != 0 {
                heap.push(Candidate {
                    rank: (merge >> 32) as u32,
                    left: l as u32,
                    right: r as u32,
                    size: b.end - a.start,
                    id: merge as u32,
                });
            }
        };
        for i in 0..syms.len() as i32 - 1 {
            push(heap, syms, i, i + 1);
        }
        while let Some(top) = heap.pop() {
            let (l, r) = (top.left as usize, top.right as usize);
            let (a, b) = (syms[l], syms[r]);
            if a.start == a.end
                || b.start == b.end
                || (a.end - a.start) + (b.end - b.start) != top.size
            {
                continue;
            }
            if self.types[top.id as usize] == PieceType::Unused {
                unused.push((a.start, b.start, b.end));
            }
            syms[l].end = b.end;
            syms[l].id = top.id;
            syms[l].next = b.next;
            if b.next >= 0 {
                syms[b.next as usize].prev = l as i32;
            }
            // An empty range marks a symbol merged away.
            syms[r].end = syms[r].start;
            push(heap, syms, syms[l].prev, l as i32);
            push(heap, syms, l as i32, syms[l].next);
        }
    }

    /// Vocabulary id of one character (given as its UTF-8 bytes).
    #[inline(always)]
    fn char_id(&self, c: &[u8]) -> u32 {
        let cp = match *c {
            [a] => u32::from(a),
            [a, b] => (u32::from(a & 0x1f) << 6) | u32::from(b & 0x3f),
            [a, b, d] => {
                (u32::from(a & 0x0f) << 12) | (u32::from(b & 0x3f) << 6) | u32::from(d & 0x3f)
            }
            _ => return self.vocab.get(c).copied().unwrap_or(NO_ID),
        };
        self.bmp_ids[cp as usize]
    }

    /// Emit the ids of the final symbol `s[start..end]`: resegment UNUSED pieces into the pieces
    /// they were merged from, then fall back to bytes for unknown pieces.
    fn emit(&self, s: &[u8], start: usize, end: usize, unused: &[UnusedMerge], out: &mut Vec<u32>) {
        let piece = &s[start..end];
        let id = self.piece_to_id(piece);
        if self.types[id as usize] == PieceType::Unused {
            if let Some(&(_, mid, _)) = unused
                .iter()
                .rev()
                .find(|&&(a, _, b)| a as usize == start && b as usize == end)
            {
                self.emit(s, start, mid as usize, unused, out);
                self.emit(s, mid as usize, end, unused, out);
                return;
            }
        }
        if id == self.unk_id && self.types[id as usize] == PieceType::Unknown {
            if let Some(bytes) = &self.byte_ids {
                out.extend(piece.iter().map(|&b| bytes[b as usize]));
                return;
            }
        }
        out.push(id);
    }
}
