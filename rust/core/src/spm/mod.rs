//! SentencePiece BPE models (`.model` protobuf files), encoded exactly as the `sentencepiece`
//! library does: normalizer (precompiled charsmap, extra-whitespace removal, dummy prefix, `▁`
//! escaping), user-defined symbols, score-ordered BPE merges with leftmost tie-breaking,
//! resegmentation of UNUSED pieces, and byte fallback for unknown pieces (without it, one `<unk>`
//! for each run of unknown characters).
//!
//! * [`model`]: parsing the `.model` file and cutting a text into chunks;
//! * [`normalizer`]: the precompiled charsmap and sentencepiece's normalization rules;
//! * [`bpe`]: the merges of one chunk (two algorithms with the same result);
//! * [`merge_table`]: the `(left id, right id)` -> merged piece table the merges look up.
//!
//! Speed comes from observations that do not change the result:
//! * a boundary between two characters can be cut whenever no vocabulary piece contains that
//!   character pair — no merge can ever cross it, and BPE runs independently on each side.
//!   For `▁`-escaped models that is the case before every `▁` that follows a non-`▁` character
//!   (checked against the vocabulary when the model is loaded, not assumed);
//! * the ids of a chunk depend only on its bytes, so a per-thread cache maps chunks to ids
//!   ([`crate::chunk_cache`]); when the normalizer only escapes spaces (Mistral, Llama), chunks
//!   are cut, hashed and looked up on the raw text and only a miss is escaped and merged;
//! * merges are looked up by `(left id, right id)` in a flat hash table that yields the rank of
//!   the merged piece's score (ranks order exactly as scores do), and a chunk of at most 48
//!   characters is merged in small fixed arrays.

mod bpe;
mod merge_table;
mod model;
mod normalizer;

pub use model::{EncodeState, SpmModel};

use crate::proto::ProtoError;

/// Why a SentencePiece model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpmError {
    #[error("cannot read SentencePiece model {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a SentencePiece model: {reason}")]
    NotAModel { path: String, reason: String },
    /// A SentencePiece model of another kind than BPE (`kind`: Unigram, word or char).
    #[error(
        "{path} is a SentencePiece {kind} model: vikhr encodes SentencePiece BPE models only \
         (give a BPE model, or the tokenizer's tokenizer.json with --tokenizer-type \
         HuggingFaceTokenizer)"
    )]
    NotBpe { path: String, kind: &'static str },
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Model(String),
}

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
            _ => return Err(SpmError::Model(format!("unknown piece type {v}"))),
        })
    }
}

/// `▁` (U+2581), the whitespace symbol of SentencePiece.
pub const SPACE_SYMBOL: &str = "\u{2581}";
const SPACE_BYTES: &[u8] = SPACE_SYMBOL.as_bytes();

/// The id of a character outside the vocabulary.
const NO_ID: u32 = u32::MAX;

/// Length of the UTF-8 character that starts with the byte `first`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Path, PathBuf};

    fn shared(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data")
            .join(rel);
        p.exists().then_some(p)
    }

    fn mistral() -> &'static SpmModel {
        static MODEL: std::sync::OnceLock<SpmModel> = std::sync::OnceLock::new();
        MODEL.get_or_init(|| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../vikhr/assets/tokenizers/mistral-7b-v0.1.model");
            SpmModel::from_file(&p).unwrap()
        })
    }

    #[test]
    fn loads_mistral_model() {
        let m = mistral();
        assert_eq!(m.vocab_size(), 32000);
        assert_eq!(m.bpe.unk_id, 0);
        assert_eq!((m.piece(1), m.piece(2)), (Some("<s>"), Some("</s>")));
        assert!(m.bpe.byte_ids.is_some());
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
        let m = mistral();
        assert!(m.encode("").is_empty());
        // U+10FFFF is not in the vocabulary: 4 byte pieces after the dummy-prefix piece.
        let ids = m.encode("\u{10FFFF}");
        let pieces: Vec<&str> = ids.iter().map(|&i| m.piece(i).unwrap()).collect();
        assert_eq!(pieces, ["▁", "<0xF4>", "<0x8F>", "<0xBF>", "<0xBF>"]);
    }

    #[test]
    fn without_byte_fallback_a_run_of_unknown_characters_is_one_unk_within_a_text() {
        // Mistral without its byte pieces; U+10FFFF and U+12000 are outside its vocabulary.
        let mut m = mistral().clone();
        m.bpe.byte_ids = None;
        let unk = m.bpe.unk_id;
        let (a, space) = (m.bpe.piece_to_id(b"a"), m.bpe.piece_to_id(SPACE_BYTES));
        for raw_chunking in [true, false] {
            m.raw_chunking = raw_chunking;
            m.normalizer.add_dummy_prefix = true;
            let mut state = EncodeState::default();
            for _ in 0..2 {
                // The second time from the chunk cache.
                let mut ids = Vec::new();
                m.encode_into(
                    "\u{10FFFF}\u{12000}\u{10FFFF}a\u{12000}",
                    &mut state,
                    &mut ids,
                );
                assert_eq!(ids, [space, unk, a, unk], "raw_chunking {raw_chunking}");
            }
            // A text starting with an unknown character follows a text (or a BOS) ending with
            // one: each keeps its own.
            m.normalizer.add_dummy_prefix = false;
            let mut ids = vec![unk];
            m.encode_into("\u{12000}\u{12000}", &mut state, &mut ids);
            m.encode_into("\u{12000}", &mut state, &mut ids);
            assert_eq!(ids, [unk, unk, unk], "raw_chunking {raw_chunking}");
        }
    }

    #[test]
    fn a_model_other_than_bpe_is_named_as_what_it_is() {
        // One `<unk>` piece, and a trainer spec of model_type 1 (Unigram), or none (Unigram too).
        let piece = b"\x0a\x07\x0a\x05<unk>";
        let unigram = [&piece[..], b"\x12\x02\x18\x01"].concat();
        let word = [&piece[..], b"\x12\x02\x18\x03"].concat();
        let why = "vikhr encodes SentencePiece BPE models only (give a BPE model, or the \
                   tokenizer's tokenizer.json with --tokenizer-type HuggingFaceTokenizer)";
        for (bytes, kind) in [
            (&unigram[..], "Unigram"),
            (&piece[..], "Unigram"),
            (&word, "word"),
        ] {
            let err = SpmModel::from_bytes(bytes).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("the model is a SentencePiece {kind} model: {why}")
            );
        }
        let path = std::env::temp_dir().join(format!("vikhr-unigram-{}.model", std::process::id()));
        std::fs::write(&path, &unigram).unwrap();
        let err = SpmModel::from_file(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            err,
            format!("{} is a SentencePiece Unigram model: {why}", path.display())
        );
    }

    #[test]
    fn malformed_models_are_refused_with_a_reason() {
        let err = SpmModel::from_bytes(b"\x0a\x02\x0a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed protobuf"), "{err}");
        let err = SpmModel::from_bytes(b"").unwrap_err().to_string();
        assert_eq!(err, "no pieces");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The array BPE (short chunks) and the agenda BPE (long chunks) give the same ids.
        #[test]
        fn short_and_long_bpe_agree(text in "▁?[▁a-zа-яё,.😀]{1,47}") {
            let m = mistral();
            let s = text.as_bytes();
            let (mut short, mut long) = (Vec::new(), Vec::new());
            prop_assert!(m.bpe.bpe_short(s, &mut short));
            m.bpe.bpe_long(s, &mut Default::default(), &mut long);
            prop_assert_eq!(short, long);
        }

        /// Chunking + caching must not change the ids: compare with one BPE over the whole text.
        #[test]
        fn chunked_equals_unchunked(text in "[ ▁a-zа-я\\n\\t.,!😀\u{4e00}-\u{4e0f}]{0,60}") {
            let m = mistral();
            let mut whole = m.clone();
            whole.split_before_space = false;
            whole.raw_chunking = false;
            let mut state = EncodeState::default();
            let mut a = Vec::new();
            m.encode_into(&text, &mut state, &mut a);
            let mut again = Vec::new();
            m.encode_into(&text, &mut state, &mut again); // now from the cache
            let mut b = Vec::new();
            // One chunk without the cache; the agenda BPE for > 48 characters.
            let mut norm = Vec::new();
            whole.normalizer.normalize_into(&text, &mut norm);
            if !norm.is_empty() {
                whole.bpe.bpe(&norm, &mut Default::default(), &mut b);
            }
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a, &again);
        }
    }
}
