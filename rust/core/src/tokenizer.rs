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
    pub fn huggingface(path: &Path, add_special_tokens: bool) -> Result<Self, TokenizerError> {
        let err = |reason: String| TokenizerError::HuggingFace {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        if let Some(bpe) = ByteBpe::from_json_text(&text, add_special_tokens).map_err(err)? {
            return Ok(Tokenizer::ByteLevelBpe(Box::new(bpe)));
        }
        let tokenizer: tokenizers::Tokenizer = text.parse().map_err(|e| err(format!("{e}")))?;
        Ok(Tokenizer::HuggingFace {
            tokenizer: Box::new(tokenizer),
            add_special_tokens,
        })
    }

    /// Vocabulary size as Megatron counts it (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::SentencePiece(m) => m.vocab_size(),
            Tokenizer::ByteLevelBpe(m) => m.vocab_size(),
            Tokenizer::HuggingFace { tokenizer, .. } => tokenizer.get_vocab_size(true),
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
