//! The character classes the split patterns test, one bit each, for every code point: `\p{L}`,
//! `\p{N}`, `\s`, tekken's two letter classes and `[\r\n]`. The sets come from `regex-syntax`,
//! the parser behind `fancy-regex` (which the `tokenizers` crate splits with), so a scanner that
//! tests these bits classifies every character exactly as the regex would.
//!
//! Stored as a two-level table (256-code-point blocks, identical blocks shared): two loads per
//! character of three or four bytes, about 60 KiB in all; characters of one or two bytes (ASCII,
//! Latin, Cyrillic, Greek, ...) have a flat table of their own.

use std::sync::OnceLock;

/// `\p{L}`: a letter.
pub(super) const LETTER: u8 = 1;
/// `\p{N}`: a number.
pub(super) const NUMBER: u8 = 2;
/// `\s`: Unicode White_Space (as both `regex` and Oniguruma define it).
pub(super) const SPACE: u8 = 4;
/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`: tekken's "upper" class.
pub(super) const UPPER: u8 = 8;
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`: tekken's "lower" class.
pub(super) const LOWER: u8 = 16;
/// `[\r\n]`.
pub(super) const NEWLINE: u8 = 32;
/// Past the end of the text (no character, so no other bit).
pub(super) const END: u8 = 128;

const BLOCK: usize = 256;
const CODE_POINTS: usize = 0x11_0000;

pub(super) struct ClassTable {
    /// Code points below U+0800 (the characters of one or two UTF-8 bytes).
    short: Box<[u8; 0x800]>,
    /// Block number of each 256-code-point block.
    index: Vec<u16>,
    blocks: Vec<u8>,
}

/// The code points of a regex character class, as inclusive ranges.
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::parse(pattern).expect("a valid class");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

impl ClassTable {
    fn build() -> Self {
        let mut flat = vec![0u8; CODE_POINTS];
        for (bit, pattern) in [
            (LETTER, r"\p{L}"),
            (NUMBER, r"\p{N}"),
            (SPACE, r"\s"),
            (UPPER, r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"),
            (LOWER, r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"),
            (NEWLINE, r"[\r\n]"),
        ] {
            for (lo, hi) in class_ranges(pattern) {
                for c in &mut flat[lo as usize..=hi as usize] {
                    *c |= bit;
                }
            }
        }
        let mut short = Box::new([0u8; 0x800]);
        short.copy_from_slice(&flat[..0x800]);
        let mut blocks: Vec<u8> = Vec::new();
        let mut seen: rustc_hash::FxHashMap<&[u8], u16> = Default::default();
        let mut index = Vec::with_capacity(CODE_POINTS / BLOCK);
        for block in flat.chunks(BLOCK) {
            let n = seen.len() as u16;
            let id = *seen.entry(block).or_insert_with(|| {
                blocks.extend_from_slice(block);
                n
            });
            index.push(id);
        }
        ClassTable {
            short,
            index,
            blocks,
        }
    }

    pub(super) fn get() -> &'static ClassTable {
        static TABLE: OnceLock<ClassTable> = OnceLock::new();
        TABLE.get_or_init(ClassTable::build)
    }

    /// The class bits of the code point `cp`.
    #[inline(always)]
    pub(super) fn of(&self, cp: u32) -> u8 {
        let block = self.index[(cp as usize) >> 8] as usize;
        self.blocks[block * BLOCK + (cp as usize & (BLOCK - 1))]
    }

    /// The class bits and byte length of the character at `s[i..]`, or `(END, 0)` at the end.
    /// `s` is UTF-8 and `i` a character boundary.
    #[inline(always)]
    pub(super) fn at(&self, s: &[u8], i: usize) -> (u8, usize) {
        let Some(&b) = s.get(i) else {
            return (END, 0);
        };
        if b < 0x80 {
            return (self.short[b as usize], 1);
        }
        if b < 0xe0 {
            let cp = ((b as usize & 0x1f) << 6) | (s[i + 1] as usize & 0x3f);
            return (self.short[cp], 2);
        }
        let (cp, n) = decode(s, i);
        (self.of(cp), n)
    }
}

/// The code point and byte length of the (non-ASCII) UTF-8 character at `s[i..]`.
#[inline(always)]
pub(super) fn decode(s: &[u8], i: usize) -> (u32, usize) {
    let b = s[i] as u32;
    let cont = |k: usize| (s[i + k] & 0x3f) as u32;
    if b < 0xe0 {
        ((b & 0x1f) << 6 | cont(1), 2)
    } else if b < 0xf0 {
        ((b & 0x0f) << 12 | cont(1) << 6 | cont(2), 3)
    } else {
        ((b & 0x07) << 18 | cont(1) << 12 | cont(2) << 6 | cont(3), 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code point (sampled densely) has the bits the regex engine gives it.
    #[test]
    fn table_matches_the_regex_classes() {
        let t = ClassTable::get();
        let classes = [
            (LETTER, fancy_regex::Regex::new(r"^\p{L}$").unwrap()),
            (NUMBER, fancy_regex::Regex::new(r"^\p{N}$").unwrap()),
            (SPACE, fancy_regex::Regex::new(r"^\s$").unwrap()),
            (
                UPPER,
                fancy_regex::Regex::new(r"^[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]$").unwrap(),
            ),
            (
                LOWER,
                fancy_regex::Regex::new(r"^[\p{Ll}\p{Lm}\p{Lo}\p{M}]$").unwrap(),
            ),
        ];
        let mut buf = [0u8; 4];
        for cp in (0..0x3000u32).chain((0x3000..0x11_0000).step_by(97)) {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = c.encode_utf8(&mut buf);
            let (bits, len) = t.at(s.as_bytes(), 0);
            assert_eq!(len, s.len());
            for (bit, re) in &classes {
                assert_eq!(
                    bits & bit != 0,
                    re.is_match(s).unwrap(),
                    "U+{cp:04X} bit {bit}"
                );
            }
        }
        assert_eq!(t.at(b"\r", 0).0, SPACE | NEWLINE);
        assert_eq!(t.at(b"a", 1), (END, 0));
    }
}
