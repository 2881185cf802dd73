//! SentencePiece BPE models (`.model` protobuf files), encoded exactly as the `sentencepiece`
//! library does: normalizer (precompiled charsmap, extra-whitespace removal, dummy prefix, `▁`
//! escaping), user-defined symbols, score-ordered BPE merges with leftmost tie-breaking,
//! resegmentation of UNUSED pieces and byte fallback for unknown pieces.
//!
//! Speed comes from two observations that do not change the result:
//! * a boundary between two characters can be cut whenever no vocabulary piece contains that
//!   character pair — no merge can ever cross it, and BPE runs independently on each side.
//!   For `▁`-escaped models that is the case before every `▁` that follows a non-`▁` character
//!   (checked against the vocabulary when the model is loaded, not assumed);
//! * the ids of a chunk depend only on its bytes, so a per-thread cache maps chunks to ids.

use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use crate::proto::{fields, ProtoError};

/// `▁` (U+2581), the whitespace symbol of SentencePiece.
pub const SPACE_SYMBOL: &str = "\u{2581}";
const SPACE_BYTES: &[u8] = SPACE_SYMBOL.as_bytes();

/// A small, fast, non-cryptographic hasher (the Fx hash of rustc) for byte-string keys.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the entropy in the high bits; hashbrown picks buckets with the
        // low ones, so rotate them down (as rustc-hash 2 does).
        self.hash.rotate_left(26)
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxMap<K, V> = HashMap<K, V, FxBuild>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: i64) -> Result<Self, SpmError> {
        Ok(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return Err(SpmError(format!("unknown piece type {v}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpmError(pub String);

impl fmt::Display for SpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpmError {}

impl From<ProtoError> for SpmError {
    fn from(e: ProtoError) -> Self {
        SpmError(e.to_string())
    }
}

/// The darts-clone double array of a precompiled charsmap plus its replacement strings.
#[derive(Debug, Clone)]
struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    fn parse(blob: &[u8]) -> Result<Self, SpmError> {
        let bad = || SpmError("precompiled_charsmap is truncated".into());
        let size = u32::from_le_bytes(blob.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let trie = blob.get(4..4 + size).ok_or_else(bad)?;
        if size % 4 != 0 || size == 0 {
            return Err(SpmError("precompiled_charsmap has a bad trie size".into()));
        }
        let units = trie
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(CharsMap {
            units,
            normalized: blob[4 + size..].to_vec(),
        })
    }

    /// Longest rule matching a prefix of `input`: (matched length, replacement).
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        // darts-clone unit layout: see darts.h (has_leaf, value, label, offset).
        let unit = |pos: usize| self.units.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut node = offset(unit(0)?);
        let mut best: Option<(usize, u32)> = None;
        for (i, &b) in input.iter().enumerate() {
            node ^= b as usize;
            let u = unit(node)?;
            if (u & ((1 << 31) | 0xff)) != b as u32 {
                break;
            }
            node ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let value = unit(node)? & ((1u32 << 31) - 1);
                best = Some((i + 1, value));
            }
        }
        let (len, value) = best?;
        let start = value as usize;
        let rest = self.normalized.get(start..)?;
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

#[derive(Debug, Clone)]
struct NormalizerSpec {
    charsmap: Option<CharsMap>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

/// A SentencePiece BPE model ready to encode.
#[derive(Debug, Clone)]
pub struct SpmModel {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<PieceType>,
    /// NORMAL, USER_DEFINED and UNUSED pieces (sentencepiece's `pieces_`).
    vocab: FxMap<Box<[u8]>, u32>,
    /// `(left id << 32) | right id` -> id of the piece `left ++ right`, for every split of every
    /// vocabulary piece into two vocabulary pieces: merges without hashing strings.
    merges: FxMap<u64, u32>,
    /// Vocabulary id of each single-character piece of the Basic Multilingual Plane (or NO_ID).
    bmp_ids: Vec<u32>,
    /// CONTROL, UNKNOWN and BYTE pieces (sentencepiece's `reserved_`).
    reserved: FxMap<Box<[u8]>, u32>,
    user_defined: Vec<Box<[u8]>>,
    user_defined_max_len: usize,
    byte_ids: Option<[u32; 256]>,
    unk_id: u32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    normalizer: NormalizerSpec,
    treat_whitespace_as_suffix: bool,
    /// True when no piece contains a non-`▁` character followed by `▁` (see the module docs).
    split_before_space: bool,
}

fn opt_id(v: i64, n: usize) -> Option<u32> {
    let v = v as i32;
    (v >= 0 && (v as usize) < n).then_some(v as u32)
}

impl SpmModel {
    pub fn from_file(path: &Path) -> Result<Self, SpmError> {
        let bytes = std::fs::read(path).map_err(|e| {
            SpmError(format!(
                "cannot read SentencePiece model {}: {e}",
                path.display()
            ))
        })?;
        Self::from_bytes(&bytes).map_err(|e| {
            SpmError(format!(
                "{} is not a SentencePiece model: {e}",
                path.display()
            ))
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SpmError> {
        let mut pieces = Vec::new();
        let mut scores = Vec::new();
        let mut types = Vec::new();
        let (mut model_type, mut byte_fallback, mut suffix) = (1i64, false, false);
        let (mut bos, mut eos, mut pad) = (1i64, 2i64, -1i64);
        let mut normalizer = NormalizerSpec {
            charsmap: None,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        let mut saw_trainer = false;
        for f in fields(bytes) {
            let (num, val) = f?;
            match num {
                1 => {
                    let (mut piece, mut score, mut ty) = (String::new(), 0f32, 1i64);
                    for g in fields(val.as_bytes()?) {
                        let (n, v) = g?;
                        match n {
                            1 => {
                                piece = String::from_utf8(v.as_bytes()?.to_vec())
                                    .map_err(|_| SpmError("a piece is not valid UTF-8".into()))?
                            }
                            2 => score = v.as_f32()?,
                            3 => ty = v.as_i64()?,
                            _ => {}
                        }
                    }
                    pieces.push(piece);
                    scores.push(score);
                    types.push(PieceType::from_proto(ty)?);
                }
                2 => {
                    saw_trainer = true;
                    for g in fields(val.as_bytes()?) {
                        let (n, v) = g?;
                        match n {
                            3 => model_type = v.as_i64()?,
                            24 => suffix = v.as_i64()? != 0,
                            35 => byte_fallback = v.as_i64()? != 0,
                            41 => bos = v.as_i64()?,
                            42 => eos = v.as_i64()?,
                            43 => pad = v.as_i64()?,
                            _ => {}
                        }
                    }
                }
                3 => {
                    for g in fields(val.as_bytes()?) {
                        let (n, v) = g?;
                        match n {
                            2 => {
                                let blob = v.as_bytes()?;
                                if !blob.is_empty() {
                                    normalizer.charsmap = Some(CharsMap::parse(blob)?);
                                }
                            }
                            3 => normalizer.add_dummy_prefix = v.as_i64()? != 0,
                            4 => normalizer.remove_extra_whitespaces = v.as_i64()? != 0,
                            5 => normalizer.escape_whitespaces = v.as_i64()? != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err(SpmError("no pieces".into()));
        }
        if !saw_trainer || model_type != 2 {
            return Err(SpmError(format!(
                "only BPE models are supported (model_type {model_type}; 1=unigram, 2=BPE)"
            )));
        }
        let n = pieces.len();
        let mut vocab = FxMap::default();
        let mut reserved = FxMap::default();
        let mut user_defined = Vec::new();
        let mut byte_ids = [u32::MAX; 256];
        let mut unk_id = None;
        for (i, (p, t)) in pieces.iter().zip(&types).enumerate() {
            let key: Box<[u8]> = p.as_bytes().into();
            let normal = matches!(
                t,
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused
            );
            let dup = if normal {
                vocab.insert(key.clone(), i as u32).is_some()
            } else {
                reserved.insert(key.clone(), i as u32).is_some()
            };
            if dup {
                return Err(SpmError(format!("piece {p:?} appears twice")));
            }
            match t {
                PieceType::UserDefined => user_defined.push(key),
                PieceType::Unknown => unk_id = Some(i as u32),
                PieceType::Byte => {
                    let b = p
                        .strip_prefix("<0x")
                        .and_then(|s| s.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| SpmError(format!("bad byte piece {p:?}")))?;
                    byte_ids[b as usize] = i as u32;
                }
                _ => {}
            }
        }
        let unk_id = unk_id.ok_or_else(|| SpmError("the model has no UNKNOWN piece".into()))?;
        let byte_ids = if byte_fallback {
            if byte_ids.contains(&u32::MAX) {
                return Err(SpmError(
                    "byte_fallback is on but some <0xXX> pieces are missing".into(),
                ));
            }
            Some(byte_ids)
        } else {
            None
        };
        let user_defined_max_len = user_defined.iter().map(|u| u.len()).max().unwrap_or(0);
        let mut merges = FxMap::default();
        for (piece, &id) in &vocab {
            let s = std::str::from_utf8(piece).unwrap();
            for (k, _) in s.char_indices().skip(1) {
                if let (Some(&l), Some(&r)) = (vocab.get(&piece[..k]), vocab.get(&piece[k..])) {
                    merges.insert(u64::from(l) << 32 | u64::from(r), id);
                }
            }
        }
        let split_before_space = normalizer.escape_whitespaces
            && vocab.keys().all(|p| {
                let s = std::str::from_utf8(p).unwrap();
                let trimmed = s.trim_start_matches(SPACE_SYMBOL);
                !trimmed.contains(SPACE_SYMBOL)
            });
        let mut bmp_ids = vec![NO_ID; 0x10000];
        for (piece, &id) in &vocab {
            let s = std::str::from_utf8(piece).unwrap();
            let mut chars = s.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                if (c as u32) < 0x10000 {
                    bmp_ids[c as usize] = id;
                }
            }
        }
        Ok(SpmModel {
            bmp_ids,
            pieces,
            scores,
            types,
            vocab,
            merges,
            reserved,
            user_defined,
            user_defined_max_len,
            byte_ids,
            unk_id,
            bos_id: opt_id(bos, n),
            eos_id: opt_id(eos, n),
            pad_id: opt_id(pad, n),
            normalizer,
            treat_whitespace_as_suffix: suffix,
            split_before_space,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub fn piece_to_id(&self, piece: &[u8]) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.vocab.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// Length of the longest user-defined symbol that prefixes `s` (0 when none).
    fn user_defined_prefix(&self, s: &[u8]) -> usize {
        if self.user_defined.is_empty() {
            return 0;
        }
        let max = self.user_defined_max_len.min(s.len());
        (1..=max)
            .rev()
            .find(|&l| {
                self.vocab
                    .get(&s[..l])
                    .is_some_and(|&id| self.types[id as usize] == PieceType::UserDefined)
            })
            .unwrap_or(0)
    }

    /// sentencepiece's `Normalizer::NormalizePrefix`: the replacement of the next unit and its length.
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        let ud = self.user_defined_prefix(input);
        if ud > 0 {
            return (&input[..ud], ud);
        }
        if let Some(cm) = &self.normalizer.charsmap {
            if let Some((len, rep)) = cm.longest_match(input) {
                return (rep, len);
            }
        }
        // The input is a &str, so the next character is valid UTF-8.
        let len = utf8_len(input[0]);
        (&input[..len], len)
    }

    /// The normalized text (what sentencepiece feeds to the BPE model), appended to `out`.
    pub fn normalize_into(&self, text: &str, out: &mut Vec<u8>) {
        let spec = &self.normalizer;
        let ws: &[u8] = if spec.escape_whitespaces {
            SPACE_BYTES
        } else {
            b" "
        };
        let fast = spec.charsmap.is_none()
            && !spec.remove_extra_whitespaces
            && self.user_defined.is_empty();
        let mut input = text.as_bytes();
        if spec.remove_extra_whitespaces {
            while !input.is_empty() {
                let (rep, len) = self.normalize_prefix(input);
                if rep != b" " {
                    break;
                }
                input = &input[len..];
            }
        }
        if input.is_empty() {
            return;
        }
        let start = out.len();
        if !self.treat_whitespace_as_suffix && spec.add_dummy_prefix {
            out.extend_from_slice(ws);
        }
        if fast {
            if spec.escape_whitespaces {
                for part in input.split_inclusive(|&b| b == b' ') {
                    if let Some(head) = part.strip_suffix(b" ") {
                        out.extend_from_slice(head);
                        out.extend_from_slice(SPACE_BYTES);
                    } else {
                        out.extend_from_slice(part);
                    }
                }
            } else {
                out.extend_from_slice(input);
            }
        } else {
            let mut prev_space = spec.remove_extra_whitespaces;
            while !input.is_empty() {
                let (mut rep, len) = self.normalize_prefix(input);
                while prev_space && rep.first() == Some(&b' ') {
                    rep = &rep[1..];
                }
                if !rep.is_empty() {
                    for &b in rep {
                        if spec.escape_whitespaces && b == b' ' {
                            out.extend_from_slice(SPACE_BYTES);
                        } else {
                            out.push(b);
                        }
                    }
                    prev_space = rep.last() == Some(&b' ');
                }
                input = &input[len..];
                prev_space = prev_space && spec.remove_extra_whitespaces;
            }
            if spec.remove_extra_whitespaces {
                while out.len() - start >= ws.len() && out.ends_with(ws) {
                    out.truncate(out.len() - ws.len());
                }
            }
        }
        if self.treat_whitespace_as_suffix && spec.add_dummy_prefix {
            out.extend_from_slice(ws);
        }
    }

    /// Encode `text` into ids (no BOS/EOS), appending to `out`; identical to `sentencepiece`'s
    /// `encode(text)`.
    pub fn encode_into(&self, text: &str, state: &mut EncodeState, out: &mut Vec<u32>) {
        let mut norm = std::mem::take(&mut state.normalized);
        norm.clear();
        self.normalize_into(text, &mut norm);
        let s = &norm[..];
        let mut chunk_start = 0;
        let mut i = 0;
        // Walk the normalized text, cutting it into chunks that BPE can handle independently.
        while i < s.len() {
            let ud = self.user_defined_prefix(&s[i..]);
            if ud > 0 {
                self.encode_chunk(&s[chunk_start..i], state, out);
                // A user-defined symbol is frozen: one piece, never merged.
                out.push(self.piece_to_id(&s[i..i + ud]));
                i += ud;
                chunk_start = i;
                continue;
            }
            if self.split_before_space
                && i > chunk_start
                && s[i..].starts_with(SPACE_BYTES)
                && !s[..i].ends_with(SPACE_BYTES)
            {
                self.encode_chunk(&s[chunk_start..i], state, out);
                chunk_start = i;
            }
            i += utf8_len(s[i]);
        }
        self.encode_chunk(&s[chunk_start..], state, out);
        state.normalized = norm;
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut EncodeState::default(), &mut out);
        out
    }

    fn encode_chunk(&self, chunk: &[u8], state: &mut EncodeState, out: &mut Vec<u32>) {
        if chunk.is_empty() {
            return;
        }
        if chunk.len() <= CACHE_MAX_KEY {
            if let Some(ids) = state.cache.get(chunk) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let start = out.len();
        self.bpe(chunk, state, out);
        if chunk.len() <= CACHE_MAX_KEY {
            if state.cache.len() >= CACHE_MAX_ENTRIES {
                state.cache.clear();
            }
            state.cache.insert(chunk.into(), out[start..].into());
        }
    }

    /// The score of the piece `left ++ right` (adjacent in memory) when it is in the vocabulary.
    #[inline]
    fn pair(&self, s: &[u8], a: &Sym, b: &Sym) -> Option<(f32, u32)> {
        let id = if a.id != NO_ID && b.id != NO_ID {
            *self
                .merges
                .get(&(u64::from(a.id) << 32 | u64::from(b.id)))?
        } else {
            // A character outside the vocabulary: only the string can say (normally nothing).
            *self.vocab.get(&s[a.start as usize..b.end as usize])?
        };
        Some((self.scores[id as usize], id))
    }

    fn bpe(&self, s: &[u8], state: &mut EncodeState, out: &mut Vec<u32>) {
        let syms = &mut state.syms;
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
        let mut unused_merges: Vec<(u32, u32, u32)> = Vec::new();
        if syms.len() <= LINEAR_MAX_SYMBOLS {
            self.bpe_linear(s, syms, &mut unused_merges);
        } else {
            self.bpe_heap(s, syms, &mut state.heap, &mut unused_merges);
        }
        let mut i = if syms.is_empty() { -1 } else { 0 };
        while i >= 0 {
            let sym = syms[i as usize];
            if sym.id != NO_ID && self.types[sym.id as usize] != PieceType::Unused {
                out.push(sym.id);
            } else {
                self.emit(s, sym.start as usize, sym.end as usize, &unused_merges, out);
            }
            i = sym.next;
        }
    }

    /// BPE by scanning the (short) symbol list for the best pair: max score, then leftmost.
    fn bpe_linear(&self, s: &[u8], syms: &mut [Sym], unused: &mut Vec<(u32, u32, u32)>) {
        let n = syms.len();
        let mut best_of: [Option<(f32, u32)>; LINEAR_MAX_SYMBOLS] = [None; LINEAR_MAX_SYMBOLS];
        for i in 0..n.saturating_sub(1) {
            best_of[i] = self.pair(s, &syms[i], &syms[i + 1]);
        }
        loop {
            let mut best: Option<(usize, f32, u32)> = None;
            let mut i = 0i32;
            while i >= 0 {
                if let Some((score, id)) = best_of[i as usize] {
                    if best.is_none_or(|(_, b, _)| score > b) {
                        best = Some((i as usize, score, id));
                    }
                }
                i = syms[i as usize].next;
            }
            let Some((l, _, id)) = best else { break };
            let r = syms[l].next as usize;
            if self.types[id as usize] == PieceType::Unused {
                unused.push((syms[l].start, syms[r].start, syms[r].end));
            }
            syms[l].end = syms[r].end;
            syms[l].id = id;
            syms[l].next = syms[r].next;
            if syms[r].next >= 0 {
                syms[syms[r].next as usize].prev = l as i32;
            }
            best_of[r] = None;
            best_of[l] = if syms[l].next >= 0 {
                self.pair(s, &syms[l], &syms[syms[l].next as usize])
            } else {
                None
            };
            if syms[l].prev >= 0 {
                let p = syms[l].prev as usize;
                best_of[p] = self.pair(s, &syms[p], &syms[l]);
            }
        }
    }

    /// sentencepiece's agenda-based BPE (a priority queue with lazy deletion) for long chunks.
    fn bpe_heap(
        &self,
        s: &[u8],
        syms: &mut [Sym],
        heap: &mut BinaryHeap<Candidate>,
        unused: &mut Vec<(u32, u32, u32)>,
    ) {
        heap.clear();
        let push = |heap: &mut BinaryHeap<Candidate>, syms: &[Sym], l: i32, r: i32| {
            if l < 0 || r < 0 {
                return;
            }
            let (a, b) = (&syms[l as usize], &syms[r as usize]);
            if let Some((score, id)) = self.pair(s, a, b) {
                heap.push(Candidate {
                    score,
                    left: l as u32,
                    right: r as u32,
                    size: b.end - a.start,
                    id,
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
    #[inline]
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
    fn emit(
        &self,
        s: &[u8],
        start: usize,
        end: usize,
        unused: &[(u32, u32, u32)],
        out: &mut Vec<u32>,
    ) {
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

#[inline]
fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xff => 4,
        // A continuation byte cannot start a character of a &str; consume it alone.
        _ => 1,
    }
}

/// Chunks at most this long (in bytes) are cached.
const CACHE_MAX_KEY: usize = 96;
/// The per-thread cache is dropped when it grows past this many chunks (bounded memory).
const CACHE_MAX_ENTRIES: usize = 1 << 18;
/// Chunks with at most this many characters use the linear-scan BPE.
const LINEAR_MAX_SYMBOLS: usize = 48;

#[derive(Debug, Clone, Copy)]
struct Sym {
    start: u32,
    end: u32,
    prev: i32,
    next: i32,
    /// Vocabulary id of the symbol's piece, or NO_ID (a character outside the vocabulary).
    id: u32,
}

const NO_ID: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
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
    /// Higher score first; on a tie the leftmost pair first (sentencepiece's SymbolPairComparator).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Per-thread scratch space and chunk cache of an encoder.
#[derive(Default)]
pub struct EncodeState {
    normalized: Vec<u8>,
    syms: Vec<Sym>,
    heap: BinaryHeap<Candidate>,
    cache: FxMap<Box<[u8]>, Box<[u32]>>,
}

impl EncodeState {
    /// The same state without its cache (for tests that compare the cached and uncached paths).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    pub fn shared(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data")
            .join(rel);
        p.exists().then_some(p)
    }

    fn mistral() -> Option<&'static SpmModel> {
        static MODEL: std::sync::OnceLock<SpmModel> = std::sync::OnceLock::new();
        Some(MODEL.get_or_init(|| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../vikhr/assets/tokenizers/mistral-7b-v0.1.model");
            SpmModel::from_file(&p).unwrap()
        }))
    }

    #[test]
    fn loads_mistral_model() {
        let m = mistral().unwrap();
        assert_eq!(m.vocab_size(), 32000);
        assert_eq!((m.unk_id, m.bos_id, m.eos_id), (0, Some(1), Some(2)));
        assert!(m.byte_ids.is_some());
        assert!(m.split_before_space);
    }

    #[test]
    fn matches_llama_cpp_vectors() {
        for model in ["mistral-7b-v0.1", "llama-2"] {
            let (Some(mp), Some(inp), Some(outp)) = (
                shared(&format!("tokenizers/{model}.model")),
                shared("tokenizers/tests/vocab-test.inp"),
                shared(&format!("tokenizers/tests/{model}.out")),
            ) else {
                eprintln!("shared data absent; skipping");
                return;
            };
            let m = SpmModel::from_file(&mp).unwrap();
            let inp = std::fs::read_to_string(inp).unwrap();
            let out = std::fs::read_to_string(outp).unwrap();
            let tests: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
            let expected: Vec<&str> = out.split('\n').collect();
            let mut state = EncodeState::default();
            for (i, text) in tests[..tests.len() - 1].iter().enumerate() {
                let want: Vec<u32> = expected[i]
                    .split_whitespace()
                    .map(|x| x.parse().unwrap())
                    .collect();
                let mut got = Vec::new();
                m.encode_into(text, &mut state, &mut got);
                assert_eq!(got, want, "{model} test {i}: {text:?}");
            }
        }
    }

    #[test]
    fn byte_fallback_and_empty() {
        let m = mistral().unwrap();
        assert!(m.encode("").is_empty());
        // U+10FFFF is not in the vocabulary: 4 byte pieces after the dummy-prefix piece.
        let ids = m.encode("\u{10FFFF}");
        let pieces: Vec<&str> = ids.iter().map(|&i| m.piece(i).unwrap()).collect();
        assert_eq!(pieces, ["▁", "<0xF4>", "<0x8F>", "<0xBF>", "<0xBF>"]);
    }

    fn symbols(m: &SpmModel, s: &[u8]) -> Vec<Sym> {
        let mut syms = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let len = utf8_len(s[pos]);
            let idx = syms.len() as i32;
            let next = if pos + len < s.len() { idx + 1 } else { -1 };
            let id = m.vocab.get(&s[pos..pos + len]).copied().unwrap_or(NO_ID);
            syms.push(Sym {
                start: pos as u32,
                end: (pos + len) as u32,
                prev: idx - 1,
                next,
                id,
            });
            pos += len;
        }
        syms
    }

    fn final_pieces(s: &[u8], syms: &[Sym]) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut i = 0i32;
        while i >= 0 {
            let x = syms[i as usize];
            out.push((x.start, x.end));
            i = x.next;
        }
        assert_eq!(out.last().unwrap().1 as usize, s.len());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The linear-scan BPE (short chunks) and the agenda BPE (long chunks) merge identically.
        #[test]
        fn linear_and_heap_bpe_agree(text in "▁?[▁a-zа-яё,.]{1,47}") {
            let m = mistral().unwrap();
            let s = text.as_bytes();
            let mut lin = symbols(m, s);
            let mut heap = lin.clone();
            m.bpe_linear(s, &mut lin, &mut Vec::new());
            m.bpe_heap(s, &mut heap, &mut BinaryHeap::new(), &mut Vec::new());
            prop_assert_eq!(final_pieces(s, &lin), final_pieces(s, &heap));
        }

        /// Chunking + caching must not change the ids: compare with one BPE over the whole text.
        #[test]
        fn chunked_equals_unchunked(text in "[ a-zа-я\\n\\t.,!😀\u{4e00}-\u{4e0f}]{0,60}") {
            let m = mistral().unwrap();
            let mut whole = m.clone();
            whole.split_before_space = false;
            let mut state = EncodeState::default();
            let mut a = Vec::new();
            m.encode_into(&text, &mut state, &mut a);
            let mut again = Vec::new();
            m.encode_into(&text, &mut state, &mut again); // now from the cache
            let mut fresh = EncodeState::default();
            fresh.cache.clear();
            let mut b = Vec::new();
            // one chunk, no cache hit possible for long texts; heap path for > LINEAR_MAX_SYMBOLS
            let mut norm = Vec::new();
            whole.normalize_into(&text, &mut norm);
            if !norm.is_empty() {
                whole.bpe(&norm, &mut fresh, &mut b);
            }
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a, &again);
        }
    }
}
