//! The tokenizers a corpus can be encoded with: SentencePiece BPE `.model` files (vikhr's own
//! exact encoder) and Hugging Face `tokenizer.json` files (through the `tokenizers` crate).

use std::fmt;
use std::path::Path;

use crate::spm::{EncodeState, SpmModel};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenizerError {}

pub enum Tokenizer {
    SentencePiece(Box<SpmModel>),
    HuggingFace {
        tokenizer: Box<tokenizers::Tokenizer>,
        add_special_tokens: bool,
    },
}

/// Per-thread scratch state of a tokenizer.
#[derive(Default)]
pub struct TokenizerState {
    spm: EncodeState,
}

impl Tokenizer {
    pub fn sentencepiece(path: &Path) -> Result<Self, TokenizerError> {
        SpmModel::from_file(path)
            .map(|m| Tokenizer::SentencePiece(Box::new(m)))
            .map_err(|e| TokenizerError(e.to_string()))
    }

    /// A `tokenizer.json`; `add_special_tokens` applies its post-processor (e.g. a BOS), as
    /// Megatron's HuggingFaceTokenizer does.
    pub fn huggingface(path: &Path, add_special_tokens: bool) -> Result<Self, TokenizerError> {
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            TokenizerError(format!(
                "cannot load tokenizer.json {}: {e}",
                path.display()
            ))
        })?;
        Ok(Tokenizer::HuggingFace {
            tokenizer: Box::new(tokenizer),
            add_special_tokens,
        })
    }

    /// Vocabulary size as Megatron counts it (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::SentencePiece(m) => m.vocab_size(),
            Tokenizer::HuggingFace { tokenizer, .. } => tokenizer.get_vocab_size(true),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(m) => m.bos_id,
            Tokenizer::HuggingFace { .. } => None,
        }
    }

    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(m) => m.eos_id,
            Tokenizer::HuggingFace { .. } => None,
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(m) => {
                let id = m.piece_to_id(token.as_bytes());
                (m.piece(id) == Some(token)).then_some(id)
            }
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
            Tokenizer::HuggingFace {
                tokenizer,
                add_special_tokens,
            } => {
                let enc = tokenizer
                    .encode_fast(text, *add_special_tokens)
                    .map_err(|e| TokenizerError(format!("tokenizer.json failed to encode: {e}")))?;
                out.extend_from_slice(enc.get_ids());
                Ok(())
            }
        }
    }
}
