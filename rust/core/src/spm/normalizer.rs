//! sentencepiece's normalizer: the precompiled charsmap (a darts-clone double array of rewrite
//! rules), extra-whitespace removal, the dummy prefix, `▁` escaping and user-defined symbols.

use rustc_hash::FxHashSet;

use super::{utf8_len, SpmError, SPACE_BYTES};

/// The darts-clone double array of a precompiled charsmap plus its replacement strings.
#[derive(Debug, Clone)]
pub(super) struct CharsMap {
    units: Vec<u32>,
    normalized: Vec<u8>,
}

impl CharsMap {
    pub(super) fn parse(blob: &[u8]) -> Result<Self, SpmError> {
        let bad = || SpmError::Model("precompiled_charsmap is truncated".into());
        let size = u32::from_le_bytes(blob.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let trie = blob.get(4..4 + size).ok_or_else(bad)?;
        if size % 4 != 0 || size == 0 {
            return Err(SpmError::Model(
                "precompiled_charsmap has a bad trie size".into(),
            ));
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

/// How a model turns a text into the string its BPE runs on (sentencepiece's `NormalizerSpec`
/// plus the trainer's `treat_whitespace_as_suffix` and the user-defined symbols).
#[derive(Debug, Clone)]
pub(super) struct Normalizer {
    pub(super) charsmap: Option<CharsMap>,
    pub(super) add_dummy_prefix: bool,
    pub(super) remove_extra_whitespaces: bool,
    pub(super) escape_whitespaces: bool,
    pub(super) treat_whitespace_as_suffix: bool,
    /// USER_DEFINED pieces: matched greedily (longest first) and never merged.
    pub(super) user_defined: FxHashSet<Box<[u8]>>,
    pub(super) user_defined_max_len: usize,
}

impl Default for Normalizer {
    /// sentencepiece's defaults for a model file that does not set a field.
    fn default() -> Self {
        Normalizer {
            charsmap: None,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            treat_whitespace_as_suffix: false,
            user_defined: FxHashSet::default(),
            user_defined_max_len: 0,
        }
    }
}

/// Append `input` to `out` with every space written as `▁`.
#[inline]
pub(super) fn escape_spaces_into(input: &[u8], out: &mut Vec<u8>) {
    for part in input.split_inclusive(|&b| b == b' ') {
        if let Some(head) = part.strip_suffix(b" ") {
            out.extend_from_slice(head);
            out.extend_from_slice(SPACE_BYTES);
        } else {
            out.extend_from_slice(part);
        }
    }
}

impl Normalizer {
    /// True when normalizing only escapes spaces as `▁` (and adds the dummy prefix in front):
    /// no charsmap, no whitespace removal, no user-defined symbols.
    pub(super) fn only_escapes_spaces(&self) -> bool {
        self.escape_whitespaces
            && self.charsmap.is_none()
            && !self.remove_extra_whitespaces
            && self.user_defined.is_empty()
            && !self.treat_whitespace_as_suffix
    }

    /// Length of the longest user-defined symbol that prefixes `s` (0 when none).
    pub(super) fn user_defined_prefix(&self, s: &[u8]) -> usize {
        if self.user_defined.is_empty() {
            return 0;
        }
        let max = self.user_defined_max_len.min(s.len());
        (1..=max)
            .rev()
            .find(|&l| self.user_defined.contains(&s[..l]))
            .unwrap_or(0)
    }

    /// sentencepiece's `Normalizer::NormalizePrefix`: the replacement of the next unit and its length.
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        let ud = self.user_defined_prefix(input);
        if ud > 0 {
            return (&input[..ud], ud);
        }
        if let Some(cm) = &self.charsmap {
            if let Some((len, rep)) = cm.longest_match(input) {
                return (rep, len);
            }
        }
        // The input is a &str, so the next character is valid UTF-8.
        let len = utf8_len(input[0]);
        (&input[..len], len)
    }

    /// The normalized text (what sentencepiece feeds to the BPE model), appended to `out`.
    pub(super) fn normalize_into(&self, text: &str, out: &mut Vec<u8>) {
        let ws: &[u8] = if self.escape_whitespaces {
            SPACE_BYTES
        } else {
            b" "
        };
        let mut input = text.as_bytes();
        if self.remove_extra_whitespaces {
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
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(ws);
        }
        let rewrites = self.charsmap.is_some()
            || self.remove_extra_whitespaces
            || !self.user_defined.is_empty();
        if !rewrites && self.escape_whitespaces {
            escape_spaces_into(input, out);
        } else if !rewrites {
            out.extend_from_slice(input);
        } else {
            self.rewrite_into(input, start, out);
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(ws);
        }
    }

    /// The rule-by-rule path of [`Self::normalize_into`] (charsmap, whitespace removal, symbols);
    /// trailing whitespace is removed down to `start`, the dummy prefix included.
    fn rewrite_into(&self, mut input: &[u8], start: usize, out: &mut Vec<u8>) {
        let ws: &[u8] = if self.escape_whitespaces {
            SPACE_BYTES
        } else {
            b" "
        };
        let mut prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut rep, len) = self.normalize_prefix(input);
            while prev_space && rep.first() == Some(&b' ') {
                rep = &rep[1..];
            }
            if !rep.is_empty() {
                for &b in rep {
                    if self.escape_whitespaces && b == b' ' {
                        out.extend_from_slice(SPACE_BYTES);
                    } else {
                        out.push(b);
                    }
                }
                prev_space = rep.last() == Some(&b' ');
            }
            input = &input[len..];
            prev_space = prev_space && self.remove_extra_whitespaces;
        }
        if self.remove_extra_whitespaces {
            while out.len() - start >= ws.len() && out.ends_with(ws) {
                out.truncate(out.len() - ws.len());
            }
        }
    }
}
