//! The tokenizers a corpus can be encoded with: SentencePiece BPE `.model` files (vikhr's own
//! exact encoder), byte-level BPE `tokenizer.json` files (vikhr's own exact encoder, see
//! [`crate::byte_bpe`]) and any other Hugging Face `tokenizer.json` (through the `tokenizers`
//! crate). Which ids are BOS and EOS is decided by the caller (`vikhr.tokenizer.load`), not here.

use std::path::Path;

use crate::byte_bpe::{self, ByteBpe};
use crate::spm::{EncodeState, SpmError, SpmModel};

/// Why a tokenizer cannot be loaded or cannot encode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    SentencePiece(#[from] SpmError),
    #[error("cannot load tokenizer.json {path}: {reason}")]
    HuggingFace { path: String, reason: String },
    #[error("tokenizer.json failed to encode: {0}")]
    Encode(String),
}

pub enum Tokenizer {
    SentencePiece(Box<SpmModel>),
    /// A `tokenizer.json` with a BPE model behind a byte-level pre-tokenizer.
    ByteLevelBpe(Box<ByteBpe>),
    HuggingFace {
        tokenizer: Box<tokenizers::Tokenizer>,
        add_special_tokens: bool,
        vocab_size: usize,
    },
}

/// Per-thread scratch state of a tokenizer.
#[derive(Default)]
pub struct TokenizerState {
    spm: EncodeState,
    byte_bpe: byte_bpe::EncodeState,
}

impl Tokenizer {
    pub fn sentencepiece(path: &Path) -> Result<Self, TokenizerError> {
        Ok(Tokenizer::SentencePiece(Box::new(SpmModel::from_file(
            path,
        )?)))
    }

    /// A `tokenizer.json`; `add_special_tokens` applies its post-processor (e.g. a BOS), as
    /// Megatron's HuggingFaceTokenizer does. Byte-level BPE files get vikhr's own encoder, which
    /// refuses the components it does not reproduce exactly; the others the `tokenizers` crate.
    /// The file's `truncation` and `padding` play no part on either path: transformers turns both
    /// off for a call that asks for neither (as Megatron's tokenizer calls it), so they would cut
    /// or pad every document where no reference does.
    pub fn huggingface(path: &Path, add_special_tokens: bool) -> Result<Self, TokenizerError> {
        let err = |reason: String| TokenizerError::HuggingFace {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        if let Some(bpe) = ByteBpe::from_json_text(&text, add_special_tokens).map_err(err)? {
            return Ok(Tokenizer::ByteLevelBpe(Box::new(bpe)));
        }
        let mut tokenizer: tokenizers::Tokenizer = text.parse().map_err(|e| err(format!("{e}")))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| err(format!("{e}")))?
            .with_padding(None);
        let vocab_size = crate::mmidx::vocab_size(
            tokenizer.get_vocab_size(true),
            tokenizer.get_vocab(true).into_values(),
        );
        Ok(Tokenizer::HuggingFace {
            tokenizer: Box::new(tokenizer),
            add_special_tokens,
            vocab_size,
        })
    }

    /// Vocabulary size as Megatron counts it (added tokens included), or the largest id + 1
    /// when the ids have gaps (see [`crate::mmidx::vocab_size`]).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::SentencePiece(m) => m.vocab_size(),
            Tokenizer::ByteLevelBpe(m) => m.vocab_size(),
            Tokenizer::HuggingFace { vocab_size, .. } => *vocab_size,
        }
    }

    /// The id of the vocabulary piece or added token `token`, if it is one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(m) => {
                (0..m.vocab_size() as u32).find(|&i| m.piece(i) == Some(token))
            }
            Tokenizer::ByteLevelBpe(m) => m.token_to_id(token),
            Tokenizer::HuggingFace { tokenizer, .. } => tokenizer.token_to_id(token),
        }
    }

    /// Append the ids of `text` to `out`.
    pub fn encode_into(
        &self,
        text: &str,
        state: &mut TokenizerState,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        match self {
            Tokenizer::SentencePiece(m) => {
                m.encode_into(text, &mut state.spm, out);
                Ok(())
            }
            Tokenizer::ByteLevelBpe(m) => {
                m.encode_into(text, &mut state.byte_bpe, out);
                Ok(())
            }
            Tokenizer::HuggingFace {
                tokenizer,
                add_special_tokens,
                ..
            } => {
                let enc = tokenizer
                    .encode_fast(text, *add_special_tokens)
                    .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                out.extend_from_slice(enc.get_ids());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Write `v` as `{name}.json` in a fresh temporary folder; the folder and the file.
    fn write_json(name: &str, v: &Value) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("vikhr-tok-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, v.to_string()).unwrap();
        (dir, path)
    }

    fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        tok.encode_into(text, &mut TokenizerState::default(), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_vocabulary_size_holds_the_largest_id_on_every_path() {
        // Three tokens, but ids up to 70000: a uint16 dataset cannot hold them.
        let word_level = json!({"model": {"type": "WordLevel", "unk_token": "[UNK]",
            "vocab": {"[UNK]": 0, "a": 1, "b": 70000}}, "pre_tokenizer": {"type": "Whitespace"}});
        let byte_level = json!({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 70000}, "merges": []}});
        for (name, v) in [
            ("gap-word-level", &word_level),
            ("gap-byte-level", &byte_level),
        ] {
            let (dir, path) = write_json(name, v);
            let tok = Tokenizer::huggingface(&path, true).unwrap();
            assert_eq!(tok.vocab_size(), 70001, "{name}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn truncation_and_padding_in_the_file_play_no_part_on_either_path() {
        // As the `tokenizers` package writes them (`enable_truncation(2)`, `enable_padding(length=8)`).
        let truncation =
            json!({"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0});
        let padding = json!({"strategy": {"Fixed": 8}, "direction": "Right",
            "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"});
        let word_level = json!({"version": "1.0", "truncation": truncation, "padding": padding,
            "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2},
                      "unk_token": "[UNK]"}});
        let byte_level = json!({"version": "1.0", "truncation": truncation, "padding": padding,
            "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "\u{120}": 2}, "merges": []}});
        for (name, v, want) in [
            ("word-level", &word_level, vec![1, 2, 1, 2, 2]),
            ("byte-level", &byte_level, vec![0, 2, 1, 2, 0, 2, 1, 2, 1]),
        ] {
            let (dir, path) = write_json(name, v);
            let tok = Tokenizer::huggingface(&path, true).unwrap();
            assert_eq!(
                matches!(tok, Tokenizer::ByteLevelBpe(_)),
                name == "byte-level"
            );
            assert_eq!(encode(&tok, "a b a b b"), want, "{name}");
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
