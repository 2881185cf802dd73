//! Pre-tokenization: cutting a text into the words BPE runs on, exactly as the `tokenizers`
//! crate's `Split` (behavior `Isolated`) and `ByteLevel(use_regex=true)` pre-tokenizers do.
//!
//! The split patterns of the common byte-level families are recognised by their exact text and
//! cut by hand-written scanners (a few class-table lookups per character, no regex engine):
//! GPT-2's `ByteLevel` regex, Llama-3's (= cl100k) and Qwen2's (one digit per number), and
//! Mistral's tekken pattern. Each scanner reproduces the backtracking regex's leftmost-first
//! alternation; the tests compare them with `fancy-regex` on the same patterns. Any other
//! pattern is split with `fancy-regex` itself (exact, slower).
//!
//! Every character of these patterns' texts is covered by some alternative that matches at the
//! current position, so a scanner only has to find where the match that starts here ends.

use memchr::memmem;

use super::classes::{ClassTable, END, LETTER, LOWER, NEWLINE, NUMBER, SPACE, UPPER};

/// GPT-2's pattern, used by `ByteLevel` with `use_regex: true`.
pub(super) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama-3's pattern (tiktoken's cl100k_base).
pub(super) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pattern: Llama-3's with one digit per number.
pub(super) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's tekken pattern (Mistral-NeMo and later; `config.pattern` of tekken.json).
pub(super) const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A hand-written scanner for one known pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scanner {
    Gpt2,
    /// Llama-3 (`max_digits` 3) and Qwen2 (1).
    Llama3 {
        max_digits: usize,
    },
    Tekken,
}

/// How one `Split` pre-tokenizer (or `ByteLevel`'s regex) cuts a text.
pub(super) enum Splitter {
    Scan(Scanner),
    /// A `String` pattern: every occurrence is a piece of its own.
    Literal(Box<memmem::Finder<'static>>),
    /// Any other regex, run by `fancy-regex` as the `tokenizers` crate does.
    Regex(Box<fancy_regex::Regex>),
}

impl Splitter {
    /// The splitter of a `Split` regex pattern.
    pub(super) fn regex(pattern: &str) -> Result<Self, String> {
        let scanner = match pattern {
            GPT2_PATTERN => Some(Scanner::Gpt2),
            LLAMA3_PATTERN => Some(Scanner::Llama3 { max_digits: 3 }),
            QWEN2_PATTERN => Some(Scanner::Llama3 { max_digits: 1 }),
            TEKKEN_PATTERN => Some(Scanner::Tekken),
            _ => None,
        };
        if let Some(s) = scanner {
            return Ok(Splitter::Scan(s));
        }
        fancy_regex::Regex::new(pattern)
            .map(|re| Splitter::Regex(Box::new(re)))
            .map_err(|e| format!("pre_tokenizer Split regex {pattern:?} does not compile: {e}"))
    }

    /// The splitter of a `Split` string pattern (matched literally).
    pub(super) fn literal(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            // The tokenizers crate compiles the escaped (empty) string as a regex: it matches
            // everywhere, so every character becomes a piece.
            return Self::regex("");
        }
        Ok(Splitter::Literal(Box::new(
            memmem::Finder::new(text.as_bytes()).into_owned(),
        )))
    }

    /// Append the end offsets (plus `base`) of the pieces of `s` to `ends`, in order; the
    /// pieces cover `s` and none is empty. `s` is UTF-8.
    pub(super) fn split(&self, t: &ClassTable, s: &[u8], base: usize, ends: &mut Vec<usize>) {
        match self {
            Splitter::Scan(scanner) => {
                let mut i = 0;
                while i < s.len() {
                    i = scanner.match_end(t, s, i);
                    ends.push(base + i);
                }
            }
            Splitter::Literal(finder) => {
                let mut prev = 0;
                for start in finder.find_iter(s) {
                    if start > prev {
                        ends.push(base + start);
                    }
                    prev = start + finder.needle().len();
                    ends.push(base + prev);
                }
                if prev < s.len() {
                    ends.push(base + s.len());
                }
            }
            Splitter::Regex(re) => {
                let text = std::str::from_utf8(s).expect("pieces are cut at character boundaries");
                let mut prev = 0;
                // As in the tokenizers crate: matching stops at the first error (e.g. the
                // backtracking limit) and the rest is one piece.
                for m in re.find_iter(text).map_while(Result::ok) {
                    if m.start() > prev {
                        ends.push(base + m.start());
                    }
                    if m.end() > m.start() {
                        ends.push(base + m.end());
                    }
                    prev = m.end();
                }
                if prev < s.len() {
                    ends.push(base + s.len());
                }
            }
        }
    }
}

impl Scanner {
    /// End of the match that starts at `s[i]` (`i < s.len()`, a character boundary).
    #[inline]
    pub(super) fn match_end(self, t: &ClassTable, s: &[u8], i: usize) -> usize {
        match self {
            Scanner::Gpt2 => gpt2_end(t, s, i),
            Scanner::Llama3 { max_digits } => llama3_end(t, s, i, max_digits),
            Scanner::Tekken => tekken_end(t, s, i),
        }
    }
}

/// Neither a letter, a number nor white space (`[^\s\p{L}\p{N}]`), and not the end.
#[inline(always)]
fn is_other(class: u8) -> bool {
    class & (LETTER | NUMBER | SPACE | END) == 0
}

/// End of the run of characters from `i` that have any of the bits `mask`.
#[inline(always)]
fn run(t: &ClassTable, s: &[u8], mut i: usize, mask: u8) -> usize {
    loop {
        let (c, n) = t.at(s, i);
        if c & mask == 0 {
            return i;
        }
        i += n;
    }
}

/// End of the run of "other" characters (`[^\s\p{L}\p{N}]+`) from `i`.
#[inline(always)]
fn run_other(t: &ClassTable, s: &[u8], mut i: usize) -> usize {
    loop {
        let (c, n) = t.at(s, i);
        if !is_other(c) {
            return i;
        }
        i += n;
    }
}

/// End of the run of bytes from `i` that are in `set` (ASCII only).
#[inline(always)]
fn run_bytes(s: &[u8], mut i: usize, set: &[u8]) -> usize {
    while i < s.len() && set.contains(&s[i]) {
        i += 1;
    }
    i
}

/// Length of the contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`) at `s[i]` (an
/// apostrophe), if any. `ignore_case` is `(?i:...)`: ASCII case plus `ſ` (U+017F), which
/// case-folds to `s`.
#[inline]
fn contraction(s: &[u8], i: usize, ignore_case: bool) -> Option<usize> {
    let lower = |k: usize| -> u8 {
        let b = s.get(i + k).copied().unwrap_or(0);
        if ignore_case {
            b.to_ascii_lowercase()
        } else {
            b
        }
    };
    match lower(1) {
        b's' | b't' | b'm' | b'd' => Some(2),
        b'r' | b'v' if lower(2) == b'e' => Some(3),
        b'l' if lower(2) == b'l' => Some(3),
        0xc5 if ignore_case && s.get(i + 2) == Some(&0xbf) => Some(3),
        _ => None,
    }
}

/// End of the white-space alternatives at `s[i]` (a white-space character): with `newlines`,
/// `\s*[\r\n]+` first (up to the run's last `\r`/`\n`), then `\s+(?!\S)` (the run, less its
/// last character unless the run ends the text), then `\s+`.
#[inline]
fn whitespace_end(t: &ClassTable, s: &[u8], i: usize, newlines: bool) -> usize {
    let (mut j, mut last_start, mut chars, mut after_newline) = (i, i, 0usize, None);
    loop {
        let (c, n) = t.at(s, j);
        if c & SPACE == 0 {
            break;
        }
        if c & NEWLINE != 0 {
            after_newline = Some(j + 1);
        }
        last_start = j;
        j += n;
        chars += 1;
    }
    if newlines {
        if let Some(e) = after_newline {
            return e;
        }
    }
    if j == s.len() || chars < 2 {
        j
    } else {
        last_start
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
fn gpt2_end(t: &ClassTable, s: &[u8], i: usize) -> usize {
    let b = s[i];
    if b == b'\'' {
        if let Some(n) = contraction(s, i, false) {
            return i + n;
        }
    }
    let (mut c, _) = t.at(s, i);
    let mut start = i;
    if b == b' ' {
        let (next, _) = t.at(s, i + 1);
        if next & (SPACE | END) == 0 {
            (c, start) = (next, i + 1);
        }
    }
    if c & LETTER != 0 {
        run(t, s, start, LETTER)
    } else if c & NUMBER != 0 {
        run(t, s, start, NUMBER)
    } else if c & SPACE == 0 {
        run_other(t, s, start)
    } else {
        whitespace_end(t, s, i, false)
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,MAX}|
/// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
fn llama3_end(t: &ClassTable, s: &[u8], i: usize, max_digits: usize) -> usize {
    let b = s[i];
    if b == b'\'' {
        if let Some(n) = contraction(s, i, true) {
            return i + n;
        }
    }
    let (c, n) = t.at(s, i);
    if c & LETTER != 0 {
        return run(t, s, i, LETTER);
    }
    let (next, _) = t.at(s, i + n);
    if c & (NUMBER | NEWLINE) == 0 && next & LETTER != 0 {
        return run(t, s, i + n, LETTER);
    }
    if c & NUMBER != 0 {
        let mut j = i + n;
        for _ in 1..max_digits {
            let (d, dn) = t.at(s, j);
            if d & NUMBER == 0 {
                break;
            }
            j += dn;
        }
        return j;
    }
    if b == b' ' && is_other(next) {
        return run_bytes(s, run_other(t, s, i + 1), b"\r\n");
    }
    if is_other(c) {
        return run_bytes(s, run_other(t, s, i), b"\r\n");
    }
    whitespace_end(t, s, i, true)
}

/// `[U]*[W]+` at `start` (U = tekken's upper class, W = its lower class, which overlap): the U
/// run, then the W run after it; when the character after the U run is not W, the regex backs
/// the U run off to its last W character.
#[inline]
fn upper_lower(t: &ClassTable, s: &[u8], start: usize) -> Option<usize> {
    let (mut j, mut last_lower_end) = (start, None);
    loop {
        let (c, n) = t.at(s, j);
        if c & UPPER == 0 {
            if c & LOWER != 0 {
                return Some(run(t, s, j, LOWER));
            }
            return last_lower_end;
        }
        j += n;
        if c & LOWER != 0 {
            last_lower_end = Some(j);
        }
    }
}

/// `[^\r\n\p{L}\p{N}]?[U]*[W]+|[^\r\n\p{L}\p{N}]?[U]+[W]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|
/// \s*[\r\n]+|\s+(?!\S)|\s+`
fn tekken_end(t: &ClassTable, s: &[u8], i: usize) -> usize {
    let (c, n) = t.at(s, i);
    let prefix = c & (LETTER | NUMBER | NEWLINE) == 0;
    if prefix {
        if let Some(e) = upper_lower(t, s, i + n) {
            return e;
        }
    }
    if let Some(e) = upper_lower(t, s, i) {
        return e;
    }
    let (next, _) = t.at(s, i + n);
    if prefix && next & UPPER != 0 {
        return run(t, s, run(t, s, i + n, UPPER), LOWER);
    }
    if c & UPPER != 0 {
        return run(t, s, run(t, s, i, UPPER), LOWER);
    }
    if c & NUMBER != 0 {
        return i + n;
    }
    if s[i] == b' ' && is_other(next) {
        return run_bytes(s, run_other(t, s, i + 1), b"\r\n/");
    }
    if is_other(c) {
        return run_bytes(s, run_other(t, s, i), b"\r\n/");
    }
    whitespace_end(t, s, i, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The pieces of `text`, as the tokenizers crate's Split (Isolated) cuts them.
    fn regex_pieces(pattern: &str, text: &str) -> Vec<String> {
        // Compiling the Unicode classes is slow in a debug build: once per pattern.
        static COMPILED: std::sync::Mutex<Vec<(String, std::sync::Arc<Splitter>)>> =
            std::sync::Mutex::new(Vec::new());
        let splitter = {
            let mut compiled = COMPILED.lock().unwrap();
            match compiled.iter().find(|(p, _)| p == pattern) {
                Some((_, s)) => s.clone(),
                None => {
                    let re = fancy_regex::Regex::new(pattern).unwrap();
                    let s = std::sync::Arc::new(Splitter::Regex(Box::new(re)));
                    compiled.push((pattern.to_string(), s.clone()));
                    s
                }
            }
        };
        let mut ends = Vec::new();
        splitter.split(ClassTable::get(), text.as_bytes(), 0, &mut ends);
        pieces(text, &ends)
    }

    fn scanner_pieces(scanner: Scanner, text: &str) -> Vec<String> {
        let mut ends = Vec::new();
        Splitter::Scan(scanner).split(ClassTable::get(), text.as_bytes(), 0, &mut ends);
        pieces(text, &ends)
    }

    fn pieces(text: &str, ends: &[usize]) -> Vec<String> {
        let mut start = 0;
        ends.iter()
            .map(|&e| {
                let p = text[start..e].to_string();
                start = e;
                p
            })
            .collect()
    }

    const SCANNERS: [(Scanner, &str); 4] = [
        (Scanner::Gpt2, GPT2_PATTERN),
        (Scanner::Llama3 { max_digits: 3 }, LLAMA3_PATTERN),
        (Scanner::Llama3 { max_digits: 1 }, QWEN2_PATTERN),
        (Scanner::Tekken, TEKKEN_PATTERN),
    ];

    #[test]
    fn known_patterns_get_scanners() {
        for (scanner, pattern) in SCANNERS {
            assert!(matches!(Splitter::regex(pattern), Ok(Splitter::Scan(s)) if s == scanner));
        }
        assert!(matches!(Splitter::regex(r"\d+"), Ok(Splitter::Regex(_))));
        let err = Splitter::regex("(").err().unwrap();
        assert!(err.starts_with("pre_tokenizer Split regex \"(\""), "{err}");
    }

    #[test]
    fn edge_cases_match_the_regex() {
        let cases = [
            "",
            "Hello world's 'S 'LL 'Ve 'ſ 'ſx it'd we'RE",
            "  \t\n\n  x \r\n\r\n y   \u{a0}z\u{2028}\u{3000}q",
            "1234567 12a 3.14 ٣٤٥ Ⅻ ½",
            "Привет, мир! Ёлка ёж. ПРИВЕТмир приветМИР",
            "e\u{301}\u{301} \u{301}a \u{301}A !\u{301} \u{301}",
            "fn main() { println!(\"{}\", x); } // a/b//c\n/x",
            "😀😀 a😀 \u{1F1F7}\u{1F1FA} ǅungla ǈ Ab ab aB AB ʰʰA",
            "日本語のテキスト、漢字。",
            "   ",
            " ",
            "a ",
            "'",
            "\r",
            "x\n",
            "x  ",
        ];
        for (scanner, pattern) in SCANNERS {
            for text in cases {
                assert_eq!(
                    scanner_pieces(scanner, text),
                    regex_pieces(pattern, text),
                    "{scanner:?} on {text:?}"
                );
            }
        }
    }

    #[test]
    fn literal_and_empty_patterns_split_like_the_regex() {
        let t = ClassTable::get();
        for text in ["a--b----c-", "--", "x", "", "д--ж"] {
            let mut ends = Vec::new();
            Splitter::literal("--")
                .unwrap()
                .split(t, text.as_bytes(), 0, &mut ends);
            assert_eq!(pieces(text, &ends), regex_pieces("--", text), "{text:?}");
            let mut ends = Vec::new();
            Splitter::literal("")
                .unwrap()
                .split(t, text.as_bytes(), 0, &mut ends);
            assert_eq!(pieces(text, &ends), regex_pieces("", text), "{text:?}");
        }
    }

    /// Characters the patterns treat differently: letters of each case class, modifier letters,
    /// marks, digits and other numbers, every kind of white space, apostrophes and contraction
    /// letters (ſ folds to s), slashes, punctuation, symbols, emoji.
    const ALPHABET: &str = "[a-zA-Zа-яА-ЯёЁ'sStTlLrReEvVdDmMſ ǅǈʰʼ\u{301}\u{308}\u{0903}0-9٣Ⅻ½² \t\n\r\u{a0}\u{85}\u{2028}\u{2029}\u{3000}\u{b}\u{c}/\\\\.,!?(){}<>\"_=+#@$%^&*~`|;:—«»…漢字かなア😀🇷\u{1F3FB}\u{e000}]";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn scanners_match_the_regex(text in proptest::string::string_regex(&format!("{ALPHABET}{{0,40}}")).unwrap()) {
            for (scanner, pattern) in SCANNERS {
                prop_assert_eq!(
                    scanner_pieces(scanner, &text),
                    regex_pieces(pattern, &text),
                    "{:?} on {:?}", scanner, text
                );
            }
        }

        /// Runs of one class (long words, long white space, long numbers) cut the same.
        #[test]
        fn scanners_match_the_regex_on_runs(parts in proptest::collection::vec(("[ \t\n\r\u{a0}]{0,4}", "[a-zA-ZяЯ0-9'.\u{301}]{0,12}"), 0..8)) {
            let text: String = parts.iter().map(|(a, b)| format!("{a}{b}")).collect();
            for (scanner, pattern) in SCANNERS {
                prop_assert_eq!(
                    scanner_pieces(scanner, &text),
                    regex_pieces(pattern, &text),
                    "{:?} on {:?}", scanner, text
                );
            }
        }
    }
}
