//! Byte-level BPE `tokenizer.json` files (GPT-2, Llama-3, Qwen2, Mistral's tekken and their kin),
//! encoded exactly as the `tokenizers` crate encodes them, by vikhr's own code.
//!
//! Supported components (anything else is refused when the file is loaded, with one line naming
//! the part and its value — never silently different ids):
//! * model `BPE`: `vocab`, `merges` (`"a b"` strings or `["a", "b"]` pairs), `ignore_merges`,
//!   `unk_token`/`fuse_unk`; `byte_fallback` where it changes no ids (every byte in the vocab, see
//!   `config::check_byte_fallback`), `dropout` null, no subword prefix/suffix;
//! * normalizer: none, `NFC`, or a `Sequence` of these ([`normalize`]);
//! * pre_tokenizer: `ByteLevel` (GPT-2's regex or none, `add_prefix_space` either way), or a
//!   `Sequence` of `Split` steps (regex or string pattern, behavior `Isolated`, not inverted)
//!   ending with `ByteLevel` ([`split`]);
//! * added_tokens: split off first, as the crate does — the tokens matched on the raw text
//!   (`normalized: false`, e.g. special tokens) leftmost-longest, then the text between them is
//!   normalized and the `normalized: true` ones are split off that; `single_word`, `lstrip` and
//!   `rstrip` are refused;
//! * post_processor: none, `ByteLevel` (no effect on ids), `TemplateProcessing` (its `single`
//!   template, applied when special tokens are added), or a `Sequence` of these;
//! * `truncation`, `padding` and the decoder play no part in encoding (see
//!   [`crate::tokenizer::Tokenizer::huggingface`]).
//!
//! Speed comes from observations that do not change the result:
//! * the split patterns of the common families are recognised by their text and cut by
//!   hand-written scanners over a two-level table of character classes ([`classes`]); other
//!   patterns fall back to `fancy-regex`;
//! * the ids of a word depend only on its bytes, so a per-thread cache maps words to ids
//!   ([`crate::chunk_cache`]): words are cut and hashed a few ahead, their cache slots
//!   prefetched, and only a miss runs BPE; nothing is allocated per word;
//! * BPE runs on raw bytes (the vocabulary is mapped back from GPT-2's byte alphabet when
//!   loaded), looking merges up by `(left id, right id)` in a flat table behind a per-thread
//!   1 MiB cache of pair lookups; words of up to 64 bytes merge in fixed arrays ([`merge`]);
//! * with `ignore_merges`, a 256 KiB filter tells that most words are not in the vocabulary
//!   without a wait for main memory;
//! * text that is already NFC (nearly all) is not copied by the `NFC` normalizer;
//! * loading reads the vocabulary and the merges on two threads and resolves the merges on up to
//!   four (a 131k-piece vocabulary with 270k merges loads in about 0.3 s).

mod classes;
mod config;
mod merge;
mod normalize;
mod split;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use rustc_hash::FxHashMap;

use crate::chunk_cache::{hash_key, ChunkCache, MAX_KEY};
use classes::ClassTable;
use merge::{Bpe, BpeScratch};
use split::{Scanner, Splitter};

/// The added tokens matched in one pass: their contents, leftmost-longest, and their ids.
struct AddedMatcher {
    automaton: AhoCorasick,
    ids: Vec<u32>,
}

impl AddedMatcher {
    /// The matcher of `(content, id)` pairs; none when there are none.
    fn new(tokens: Vec<(String, u32)>) -> Result<Option<Self>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|t| &t.0))
            .map_err(|e| format!("added_tokens cannot be matched: {e}"))?;
        Ok(Some(AddedMatcher {
            automaton,
            ids: tokens.iter().map(|t| t.1).collect(),
        }))
    }
}

/// How a normalized piece of text is cut into words.
enum Words {
    /// Splitters run one after the other (the last one GPT-2's when `ByteLevel` has
    /// `use_regex`).
    Stages(Vec<Splitter>),
    /// `ByteLevel` with `add_prefix_space`: a space before each word the `Split` steps make (or
    /// the whole piece) that does not start with one, then GPT-2's regex when `regex`.
    PrefixSpace { splits: Vec<Splitter>, regex: bool },
}

/// A byte-level BPE tokenizer read from a `tokenizer.json`.
pub struct ByteBpe {
    bpe: Bpe,
    classes: &'static ClassTable,
    nfc: bool,
    words: Words,
    raw_added: Option<AddedMatcher>,
    normalized_added: Option<AddedMatcher>,
    /// Ids the post-processor puts before and after the text (when special tokens are added).
    before: Vec<u32>,
    after: Vec<u32>,
    vocab_size: usize,
    /// For `token_to_id`: the vocabulary, and the added tokens as listed.
    vocab: config::Vocab,
    added_ids: FxHashMap<String, u32>,
}

/// Per-thread scratch state of the encoder.
#[derive(Default)]
pub struct EncodeState {
    cache: ChunkCache,
    bpe: BpeScratch,
    ends: Vec<usize>,
    more_ends: Vec<usize>,
    normalized: String,
    prefixed: Vec<u8>,
}

/// How many words ahead the encoder hashes words and prefetches their cache slots.
const PREFETCH_AHEAD: usize = 8;

impl ByteBpe {
    /// Read the text of a `tokenizer.json`: `None` when it is not a byte-level BPE (another
    /// encoder's job), else the encoder or one line naming the part it does not support.
    /// `add_special_tokens` applies the post-processor's template.
    pub fn from_json_text(text: &str, add_special_tokens: bool) -> Result<Option<Self>, String> {
        let file: config::TokenizerFile =
            serde_json::from_str(text).map_err(|e| format!("not a tokenizer.json: {e}"))?;
        if !config::has_byte_level_pre_tokenizer(&file) {
            return Ok(None);
        }
        match config::model(file.model)? {
            Some(model) => Self::new(&file, model, add_special_tokens).map(Some),
            None => Ok(None),
        }
    }

    fn new(
        file: &config::TokenizerFile,
        model: config::Model,
        add_special_tokens: bool,
    ) -> Result<Self, String> {
        let nfc = config::normalizer(&file.normalizer)?;
        let pre = config::pre_tokenizer(&file.pre_tokenizer)?;
        let (before, after) = config::post_processor(&file.post_processor)?;
        let added = config::added_tokens(&file.added_tokens, &model.vocab)?;
        let distinct = model.vocab.len()
            + added
                .iter()
                .filter(|t| model.vocab.get(&t.content).is_none())
                .count();
        let vocab_size = crate::mmidx::vocab_size(
            distinct,
            model.vocab.ids().chain(added.iter().map(|t| t.id)),
        );
        let added_ids = added.iter().map(|t| (t.content.clone(), t.id)).collect();
        let (normalized, raw): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.normalized);
        let raw = raw.into_iter().map(|t| (t.content, t.id)).collect();
        // Tokens matched on the normalized text are normalized themselves first.
        let normalized = normalized
            .into_iter()
            .map(|t| {
                let mut content = t.content.clone();
                if nfc {
                    normalize::nfc_into(&t.content, &mut content);
                }
                (content, t.id)
            })
            .collect();
        let words = if pre.add_prefix_space {
            let regex = pre.byte_level_regex;
            Words::PrefixSpace {
                splits: pre.splits,
                regex,
            }
        } else {
            Words::Stages(pre.stages())
        };
        let (bpe, vocab) = model.into_bpe();
        Ok(ByteBpe {
            bpe,
            classes: ClassTable::get(),
            nfc,
            words,
            raw_added: AddedMatcher::new(raw)?,
            normalized_added: AddedMatcher::new(normalized)?,
            before: if add_special_tokens {
                before
            } else {
                Vec::new()
            },
            after: if add_special_tokens {
                after
            } else {
                Vec::new()
            },
            vocab_size,
            vocab,
            added_ids,
        })
    }

    /// Vocabulary size as Megatron counts it (added tokens included), or the largest id + 1 when
    /// the ids have gaps (see [`crate::mmidx::vocab_size`]).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of the token string `token` (an added token's content or a vocabulary string in
    /// GPT-2's byte alphabet), as `tokenizers`' `token_to_id` answers.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids
            .get(token)
            .copied()
            .or_else(|| self.vocab.get(token))
    }

    /// Append the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, state: &mut EncodeState, out: &mut Vec<u32>) {
        out.extend_from_slice(&self.before);
        match &self.raw_added {
            None => self.encode_raw_piece(text, state, out),
            Some(m) => for_each_piece(m, text, out, |piece, out| {
                self.encode_raw_piece(piece, state, out)
            }),
        }
        out.extend_from_slice(&self.after);
    }

    /// A piece of the text between raw-matched added tokens: normalize it, then split off the
    /// normalized added tokens.
    fn encode_raw_piece(&self, piece: &str, state: &mut EncodeState, out: &mut Vec<u32>) {
        if self.nfc && !normalize::is_stable(piece) {
            let mut norm = std::mem::take(&mut state.normalized);
            normalize::nfc_into(piece, &mut norm);
            self.encode_normalized(&norm, state, out);
            state.normalized = norm;
        } else {
            self.encode_normalized(piece, state, out);
        }
    }

    fn encode_normalized(&self, piece: &str, state: &mut EncodeState, out: &mut Vec<u32>) {
        match &self.normalized_added {
            None => self.encode_words(piece.as_bytes(), state, out),
            Some(m) => for_each_piece(m, piece, out, |p, out| {
                self.encode_words(p.as_bytes(), state, out)
            }),
        }
    }

    /// Cut `s` into words with the splitters `stages`, one after the other; the end offsets of
    /// the words are left in `state.ends`.
    fn split(&self, stages: &[Splitter], s: &[u8], state: &mut EncodeState) {
        state.ends.clear();
        let Some((first, rest)) = stages.split_first() else {
            state.ends.push(s.len());
            return;
        };
        first.split(self.classes, s, 0, &mut state.ends);
        for stage in rest {
            state.more_ends.clear();
            let mut start = 0;
            for &end in &state.ends {
                stage.split(self.classes, &s[start..end], start, &mut state.more_ends);
                start = end;
            }
            std::mem::swap(&mut state.ends, &mut state.more_ends);
        }
    }

    /// Pre-tokenize `s` (a non-empty normalized piece) and append the ids of its words.
    fn encode_words(&self, s: &[u8], state: &mut EncodeState, out: &mut Vec<u32>) {
        if s.is_empty() {
            return;
        }
        match &self.words {
            Words::Stages(stages) => {
                self.split(stages, s, state);
                let ends = std::mem::take(&mut state.ends);
                self.encode_cut(s, &ends, state, out);
                state.ends = ends;
            }
            Words::PrefixSpace { splits, regex } => {
                self.encode_words_with_prefix_space(splits, *regex, s, state, out)
            }
        }
    }

    /// Append the ids of the words of `s` that end at `ends`. Words are hashed and their cache
    /// slots prefetched PREFETCH_AHEAD words ahead of the one being encoded: a lookup in the
    /// large table is mostly a wait for main memory.
    fn encode_cut(&self, s: &[u8], ends: &[usize], state: &mut EncodeState, out: &mut Vec<u32>) {
        let mut ring = [(0usize, 0usize, 0u32); PREFETCH_AHEAD];
        let (mut head, mut queued, mut next, mut start) = (0usize, 0usize, 0usize, 0usize);
        loop {
            while queued < PREFETCH_AHEAD && next < ends.len() {
                let end = ends[next];
                let hash = hash_key(&s[start..end]);
                state.cache.prefetch(hash);
                ring[(head + queued) % PREFETCH_AHEAD] = (start, end, hash);
                queued += 1;
                next += 1;
                start = end;
            }
            if queued == 0 {
                return;
            }
            let (s0, e0, hash) = ring[head];
            head = (head + 1) % PREFETCH_AHEAD;
            queued -= 1;
            self.encode_word(&s[s0..e0], hash, state, out);
        }
    }

    /// [`Self::encode_words`] when `ByteLevel` puts a space before every word (from the `Split`
    /// steps, or the whole piece) that does not start with one, then cuts it with GPT-2's regex
    /// when `regex`.
    fn encode_words_with_prefix_space(
        &self,
        splits: &[Splitter],
        regex: bool,
        s: &[u8],
        state: &mut EncodeState,
        out: &mut Vec<u32>,
    ) {
        self.split(splits, s, state);
        let words = std::mem::take(&mut state.ends);
        let mut prefixed = std::mem::take(&mut state.prefixed);
        let gpt2 = [Splitter::Scan(Scanner::Gpt2)];
        let stages: &[Splitter] = if regex { &gpt2 } else { &[] };
        let mut start = 0;
        for &end in &words {
            prefixed.clear();
            if s[start] != b' ' {
                prefixed.push(b' ');
            }
            prefixed.extend_from_slice(&s[start..end]);
            self.split(stages, &prefixed, state);
            let ends = std::mem::take(&mut state.ends);
            self.encode_cut(&prefixed, &ends, state, out);
            state.ends = ends;
            start = end;
        }
        state.ends = words;
        state.prefixed = prefixed;
    }

    /// Append the ids of one word (`hash` = [`hash_key`] of it).
    #[inline]
    fn encode_word(&self, word: &[u8], hash: u32, state: &mut EncodeState, out: &mut Vec<u32>) {
        let cacheable = word.len() <= MAX_KEY;
        if cacheable {
            if let Some(ids) = state.cache.get(word, hash) {
                // Most words are one or two ids: no call to memcpy for those.
                match *ids {
                    [a] => out.push(a),
                    [a, b] => out.extend([a, b]),
                    _ => out.extend_from_slice(ids),
                }
                return;
            }
        }
        let start = out.len();
        self.bpe.encode_word(word, &mut state.bpe, out);
        if cacheable {
            state.cache.insert(word, hash, &out[start..]);
        }
    }
}

/// Call `encode` on each non-empty piece of `text` between the added tokens `m` finds, and
/// push the tokens' ids in between.
fn for_each_piece(
    m: &AddedMatcher,
    text: &str,
    out: &mut Vec<u32>,
    mut encode: impl FnMut(&str, &mut Vec<u32>),
) {
    let mut last = 0;
    for found in m.automaton.find_iter(text) {
        if found.start() > last {
            encode(&text[last..found.start()], out);
        }
        out.push(m.ids[found.pattern().as_usize()]);
        last = found.end();
    }
    if last < text.len() {
        encode(&text[last..], out);
    }
}

#[cfg(test)]
mod tests;
