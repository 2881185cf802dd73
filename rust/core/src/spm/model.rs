//! A SentencePiece BPE model: reading the `.model` protobuf, and encoding a text by cutting it
//! into chunks that BPE can merge independently (each cached per thread).

use std::path::Path;

use super::bpe::{Bpe, BpeScratch};
use super::normalizer::{escape_spaces_into, CharsMap, Normalizer};
use super::{utf8_len, PieceType, SpmError, SPACE_BYTES, SPACE_SYMBOL};
use crate::chunk_cache::{hash_key, ChunkCache, MAX_KEY};
use crate::proto::fields;

/// A SentencePiece BPE model ready to encode.
#[derive(Debug, Clone)]
pub struct SpmModel {
    pieces: Vec<String>,
    pub(super) bpe: Bpe,
    pub(super) normalizer: Normalizer,
    /// True when no piece contains a non-`▁` character followed by `▁` (see the module docs).
    pub(super) split_before_space: bool,
    /// True when normalizing only escapes spaces and `split_before_space` holds: then chunks can
    /// be cut and cached on the raw text (see `encode_raw`).
    pub(super) raw_chunking: bool,
}

/// Per-thread scratch space and chunk cache of an encoder.
#[derive(Default)]
pub struct EncodeState {
    normalized: Vec<u8>,
    pub(super) bpe: BpeScratch,
    cache: ChunkCache,
    /// The first chunk of a text with its dummy-prefix space (see `encode_raw`).
    first_key: Vec<u8>,
}

/// The fields of a `ModelProto` the encoder uses.
struct ModelProto {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<PieceType>,
    model_type: i64,
    byte_fallback: bool,
    normalizer: Normalizer,
}

fn read_proto(bytes: &[u8]) -> Result<ModelProto, SpmError> {
    let mut m = ModelProto {
        pieces: Vec::new(),
        scores: Vec::new(),
        types: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        normalizer: Normalizer::default(),
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
                                .map_err(|_| SpmError::Model("a piece is not valid UTF-8".into()))?
                        }
                        2 => score = v.as_f32()?,
                        3 => ty = v.as_i64()?,
                        _ => {}
                    }
                }
                m.pieces.push(piece);
                m.scores.push(score);
                m.types.push(PieceType::from_proto(ty)?);
            }
            2 => {
                saw_trainer = true;
                for g in fields(val.as_bytes()?) {
                    let (n, v) = g?;
                    match n {
                        3 => m.model_type = v.as_i64()?,
                        24 => m.normalizer.treat_whitespace_as_suffix = v.as_i64()? != 0,
                        35 => m.byte_fallback = v.as_i64()? != 0,
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
                                m.normalizer.charsmap = Some(CharsMap::parse(blob)?);
                            }
                        }
                        3 => m.normalizer.add_dummy_prefix = v.as_i64()? != 0,
                        4 => m.normalizer.remove_extra_whitespaces = v.as_i64()? != 0,
                        5 => m.normalizer.escape_whitespaces = v.as_i64()? != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        return Err(SpmError::Model("no pieces".into()));
    }
    // sentencepiece's default model_type (and that of a model without a trainer spec) is Unigram.
    let kind = if saw_trainer { m.model_type } else { 1 };
    if kind != 2 {
        let kind = match kind {
            1 => "Unigram",
            3 => "word",
            4 => "char",
            _ => return Err(SpmError::Model(format!("unknown model_type {kind}"))),
        };
        return Err(SpmError::NotBpe {
            path: "the model".into(),
            kind,
        });
    }
    Ok(m)
}

impl SpmModel {
    pub fn from_file(path: &Path) -> Result<Self, SpmError> {
        let bytes = std::fs::read(path).map_err(|source| SpmError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let path = path.display().to_string();
        Self::from_bytes(&bytes).map_err(|e| match e {
            SpmError::NotBpe { kind, .. } => SpmError::NotBpe { path, kind },
            e => SpmError::NotAModel {
                path,
                reason: e.to_string(),
            },
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SpmError> {
        let ModelProto {
            pieces,
            scores,
            types,
            byte_fallback,
            mut normalizer,
            ..
        } = read_proto(bytes)?;
        let (bpe, user_defined) = Bpe::new(&pieces, types, &scores, byte_fallback)?;
        normalizer.user_defined_max_len = user_defined.iter().map(|u| u.len()).max().unwrap_or(0);
        normalizer.user_defined = user_defined;
        let split_before_space = normalizer.escape_whitespaces
            && bpe.vocab.keys().all(|p| {
                let s = std::str::from_utf8(p).expect("pieces are UTF-8");
                !s.trim_start_matches(SPACE_SYMBOL).contains(SPACE_SYMBOL)
            });
        Ok(SpmModel {
            raw_chunking: split_before_space && normalizer.only_escapes_spaces(),
            pieces,
            bpe,
            normalizer,
            split_before_space,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// Encode `text` into ids (no BOS/EOS), appending to `out`; identical to `sentencepiece`'s
    /// `encode(text)`.
    pub fn encode_into(&self, text: &str, state: &mut EncodeState, out: &mut Vec<u32>) {
        let start = out.len();
        if self.raw_chunking {
            self.encode_raw(text.as_bytes(), state, out);
        } else {
            self.encode_normalized(text, state, out);
        }
        // Without byte fallback, sentencepiece makes a run of unknown pieces one `<unk>`
        // (`PopulateSentencePieceText`), over the whole text whatever chunks it was cut into.
        if self.bpe.byte_ids.is_none() {
            merge_unknown_runs(out, start, self.bpe.unk_id);
        }
    }

    /// [`Self::encode_into`] by normalizing the whole text first.
    fn encode_normalized(&self, text: &str, state: &mut EncodeState, out: &mut Vec<u32>) {
        let mut norm = std::mem::take(&mut state.normalized);
        norm.clear();
        self.normalizer.normalize_into(text, &mut norm);
        let s = &norm[..];
        let mut chunk_start = 0;
        let mut i = 0;
        // Walk the normalized text, cutting it into chunks that BPE can handle independently.
        while i < s.len() {
            let ud = self.normalizer.user_defined_prefix(&s[i..]);
            if ud > 0 {
                self.encode_chunk(&s[chunk_start..i], state, out);
                // A user-defined symbol is frozen: one piece, never merged.
                out.push(self.bpe.piece_to_id(&s[i..i + ud]));
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
        if chunk.len() > MAX_KEY {
            self.bpe.bpe(chunk, &mut state.bpe, out);
            return;
        }
        let hash = hash_key(chunk);
        if let Some(ids) = state.cache.get(chunk, hash) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.bpe.bpe(chunk, &mut state.bpe, out);
        state.cache.insert(chunk, hash, &out[start..]);
    }

    /// [`Self::encode_into`] for models whose normalizer only escapes spaces (`raw_chunking`):
    /// chunks are cut and cached on the raw text (a run of spaces, then everything up to the
    /// next space), and only a chunk missing from the cache is escaped and run through BPE.
    fn encode_raw(&self, text: &[u8], state: &mut EncodeState, out: &mut Vec<u32>) {
        let n = text.len();
        let mut start = 0;
        if n > 0 && self.normalizer.add_dummy_prefix {
            // The dummy prefix is a space in front of the first chunk.
            let end = raw_chunk_end(text, 0);
            let mut key = std::mem::take(&mut state.first_key);
            key.clear();
            key.push(b' ');
            key.extend_from_slice(&text[..end]);
            let hash = hash_key(&key);
            self.encode_raw_chunk(&key, hash, state, out);
            state.first_key = key;
            start = end;
        }
        // Cut and hash chunks PREFETCH_AHEAD ahead of the one being encoded and ask for their
        // cache slots early: a lookup in the large table is mostly a wait for main memory.
        let mut ring = [(0usize, 0usize, 0u32); PREFETCH_AHEAD];
        let (mut head, mut queued) = (0usize, 0usize);
        loop {
            while queued < PREFETCH_AHEAD && start < n {
                let end = raw_chunk_end(text, start);
                let hash = hash_key(&text[start..end]);
                state.cache.prefetch(hash);
                ring[(head + queued) % PREFETCH_AHEAD] = (start, end, hash);
                queued += 1;
                start = end;
            }
            if queued == 0 {
                break;
            }
            let (s0, e0, hash) = ring[head];
            head = (head + 1) % PREFETCH_AHEAD;
            queued -= 1;
            self.encode_raw_chunk(&text[s0..e0], hash, state, out);
        }
    }

    /// Encode one raw chunk (`hash` = [`hash_key`] of it, ignored when it is too long to cache).
    #[inline]
    fn encode_raw_chunk(&self, raw: &[u8], hash: u32, state: &mut EncodeState, out: &mut Vec<u32>) {
        let cacheable = raw.len() <= MAX_KEY;
        if cacheable {
            if let Some(ids) = state.cache.get(raw, hash) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let mut norm = std::mem::take(&mut state.normalized);
        norm.clear();
        escape_spaces_into(raw, &mut norm);
        let start = out.len();
        self.bpe.bpe(&norm, &mut state.bpe, out);
        state.normalized = norm;
        if cacheable {
            state.cache.insert(raw, hash, &out[start..]);
        }
    }
}

/// Keep one `unk` of each run of `unk`s in `ids[start..]`.
fn merge_unknown_runs(ids: &mut Vec<u32>, start: usize, unk: u32) {
    let Some(first) = ids[start..]
        .windows(2)
        .position(|w| w[0] == unk && w[1] == unk)
    else {
        return;
    };
    // ids[..kept] is the result so far; it ends with the run's first `unk`.
    let mut kept = start + first + 1;
    for i in kept + 1..ids.len() {
        if ids[i] != unk || ids[kept - 1] != unk {
            ids[kept] = ids[i];
            kept += 1;
        }
    }
    ids.truncate(kept);
}

/// How many chunks ahead `encode_raw` looks up cache slots.
const PREFETCH_AHEAD: usize = 8;

/// End of the raw chunk that starts at `start`: a run of spaces, then up to the next space that
/// follows a character other than a space or a literal `▁` (a cut between two `▁` is not known
/// to be safe, see `split_before_space`).
#[inline]
fn raw_chunk_end(text: &[u8], start: usize) -> usize {
    let n = text.len();
    let mut end = start;
    loop {
        while end < n && text[end] == b' ' {
            end += 1;
        }
        end = match memchr::memchr(b' ', &text[end..]) {
            Some(p) => end + p,
            None => n,
        };
        if end == n || !text[..end].ends_with(SPACE_BYTES) {
            return end;
        }
    }
}
