//! The `NFC` normalizer, with the tables the `tokenizers` crate itself uses
//! (`unicode-normalization-alignments`, whose Unicode version can differ from newer crates').
//!
//! Text that is already NFC, nearly all of it, costs one table test per non-ASCII character: a
//! string whose characters all have `NFC_Quick_Check=Yes` and combining class 0 is NFC, so only a
//! text with some other character is normalized.

use std::sync::OnceLock;

use unicode_normalization_alignments::char::canonical_combining_class;
use unicode_normalization_alignments::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// The first code point that is not NFC-stable (U+0300, a combining grave accent).
const FIRST_UNSTABLE: u32 = 0x300;

/// One bit per Basic Multilingual Plane code point: set when the character alone is NFC and
/// never combines with its neighbours.
fn stable_bmp() -> &'static [u64] {
    static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut bits = vec![0u64; 0x10000 / 64];
        for c in (0..0x10000u32).filter_map(char::from_u32) {
            if stable(c) {
                bits[c as usize / 64] |= 1 << (c as u32 % 64);
            }
        }
        bits
    })
}

fn stable(c: char) -> bool {
    is_nfc_quick(std::iter::once(c)) == IsNormalized::Yes && canonical_combining_class(c) == 0
}

/// True when `s` is certainly NFC already (false can still be NFC).
pub(super) fn is_stable(s: &str) -> bool {
    let table = stable_bmp();
    s.chars().all(|c| {
        let cp = c as u32;
        if cp < 0x10000 {
            cp < FIRST_UNSTABLE || table[cp as usize / 64] >> (cp % 64) & 1 == 1
        } else {
            stable(c)
        }
    })
}

/// `s` in NFC, written to `out` (cleared first).
pub(super) fn nfc_into(s: &str, out: &mut String) {
    out.clear();
    out.extend(s.nfc().map(|(c, _)| c));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_text_is_left_alone_and_the_rest_composed() {
        assert!(is_stable("Привет, мир! hello 漢字 😀"));
        assert!(!is_stable("е\u{301}"));
        let mut out = String::new();
        nfc_into("е\u{301} e\u{301} A\u{30a}", &mut out);
        assert_eq!(out, "е\u{301} é Å");
        // Every stable BMP character is its own NFC.
        for cp in (0..0x10000u32).step_by(7) {
            if let Some(c) = char::from_u32(cp) {
                let s = c.to_string();
                if is_stable(&s) {
                    nfc_into(&s, &mut out);
                    assert_eq!(out, s, "U+{cp:04X}");
                }
            }
        }
    }
}
