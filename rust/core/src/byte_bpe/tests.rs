//! Whole-encoder tests: a byte-level BPE trained here with the `tokenizers` crate, written out
//! as `tokenizer.json` in each supported configuration, must give the crate's own ids.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::merge::BpeScratch;
use super::split::{GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, TEKKEN_PATTERN};
use super::*;

/// Training text: Russian and English prose, code, numbers, emoji, white space of all kinds.
const SAMPLES: [&str; 10] = [
    "Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему.",
    "It was the best of times, it was the worst of times; we'd say it's what they'll do.",
    "fn main() {\n    let x = vec![1, 2, 3];\n    println!(\"{:?}\", x);\n}\n",
    "Цена: 1234567 руб. (≈ 12 345,67 $) — 15.03.2024, 09:45.",
    "ПРИВЕТ Мир! ЁЛКА ёлка Ёлка. HeLLo WORLD don'T I'M YOU'RE",
    "Emoji 😀😀 🇷🇺 👍🏻 and 日本語のテキスト、漢字。",
    "  indented\tline\r\nwindows line\r\n\n\nparagraph   gap \u{a0}nbsp \u{2028} sep",
    "Ударе\u{301}ние и\u{301} ещё: cafe\u{301}, Å, é.",
    "<html><body class=\"x\">/path/to/file.py // comment</body></html>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%ivan%';",
];

/// The trained base tokenizer.json (ByteLevel pre-tokenizer, 700 ids), as JSON.
fn base() -> &'static Value {
    static BASE: OnceLock<Value> = OnceLock::new();
    BASE.get_or_init(|| {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let mut tok = tokenizers::Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(700)
            .min_frequency(2)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let lines: Vec<String> = (0..40)
            .flat_map(|i| SAMPLES.iter().map(move |s| format!("{s} {i}")))
            .collect();
        tok.train(&mut trainer, lines.iter()).unwrap();
        serde_json::from_str(&tok.to_string(false).unwrap()).unwrap()
    })
}

fn byte_level(add_prefix_space: bool, use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: Value) -> Value {
    json!({"type": "Split", "pattern": pattern, "behavior": "Isolated", "invert": false})
}

fn split_then_byte_level(pattern: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [split(json!({"Regex": pattern})), byte_level(false, false)]})
}

fn added(content: &str, special: bool, normalized: bool) -> Value {
    json!({"id": 0, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": normalized, "special": special})
}

/// A BOS template on `<|begin_of_text|>` (id 700, the first added token).
fn bos_template() -> Value {
    json!({"type": "TemplateProcessing",
           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}}],
           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
           "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [700],
                                                    "tokens": ["<|begin_of_text|>"]}}})
}

/// The configurations under test: (name, tokenizer.json).
fn variants() -> &'static [(&'static str, Value)] {
    static VARIANTS: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
    VARIANTS.get_or_init(|| {
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut v = base().clone();
            edit(&mut v);
            v
        };
        let specials = || {
            json!([
                added("<|begin_of_text|>", true, false),
                added("<|end_of_text|>", true, false),
                added("<s>", true, false),
                added("<|im_start|>", true, false)
            ])
        };
        vec![
            ("gpt2", with(&|_| {})),
            (
                "gpt2-prefix-space",
                with(&|v| v["pre_tokenizer"] = byte_level(true, true)),
            ),
            (
                "llama3",
                with(&|v| {
                    v["pre_tokenizer"] = split_then_byte_level(LLAMA3_PATTERN);
                    v["model"]["ignore_merges"] = json!(true);
                    v["added_tokens"] = specials();
                    v["post_processor"] = json!({"type": "Sequence", "processors": [
                    byte_level(true, true), bos_template()]});
                }),
            ),
            (
                "qwen2-nfc",
                with(&|v| {
                    v["pre_tokenizer"] = split_then_byte_level(QWEN2_PATTERN);
                    v["normalizer"] = json!({"type": "Sequence", "normalizers": [{"type": "NFC"}]});
                    let mut tokens = specials();
                    // Matched on the normalized text: "cafe" + U+0301 is found as "café".
                    tokens
                        .as_array_mut()
                        .unwrap()
                        .push(added("cafe\u{301}", false, true));
                    tokens
                        .as_array_mut()
                        .unwrap()
                        .push(added("мир", false, true));
                    v["added_tokens"] = tokens;
                }),
            ),
            (
                "tekken",
                with(&|v| {
                    v["pre_tokenizer"] = split_then_byte_level(TEKKEN_PATTERN);
                    v["model"]["ignore_merges"] = json!(true);
                    v["added_tokens"] = specials();
                }),
            ),
            (
                "gpt2-pattern-split",
                with(&|v| {
                    v["pre_tokenizer"] = split_then_byte_level(GPT2_PATTERN);
                }),
            ),
            (
                "custom-regex-two-splits-prefix",
                with(&|v| {
                    v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                    split(json!({"String": "--"})),
                    split(json!({"Regex": r"\w+|[^\w\s]+|\s+"})),
                    byte_level(true, true)]});
                }),
            ),
            (
                "no-regex-prefix",
                with(&|v| v["pre_tokenizer"] = byte_level(true, false)),
            ),
            (
                "missing-bytes-unk",
                with(&|v| {
                    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                    // Bytes 0x00 and 0x01 are in no merge of this vocabulary.
                    let (a, b) = (vocab.remove("Ā").unwrap(), vocab.remove("ā").unwrap());
                    vocab.insert("<unk>".into(), a);
                    vocab.insert("<pad>".into(), b);
                    v["model"]["unk_token"] = json!("<unk>");
                    v["model"]["fuse_unk"] = json!(true);
                }),
            ),
            // byte_fallback with every byte in the vocab (and the <0xXX> tokens of a SentencePiece
            // conversion, which no character of a ByteLevel word is): nothing falls back.
            (
                "byte-fallback-every-byte",
                with(&|v| {
                    v["model"]["byte_fallback"] = json!(true);
                    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                    let next = vocab.len();
                    for b in 0..=255 {
                        vocab.insert(format!("<0x{b:02X}>"), json!(next + b));
                    }
                }),
            ),
            // byte_fallback where missing bytes lack one of their <0xXX> tokens: unk, as without it.
            (
                "byte-fallback-missing-bytes-unk",
                with(&|v| {
                    v["model"]["byte_fallback"] = json!(true);
                    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                    // "Ā" and "ā" (bytes 0x00, 0x01) are U+0100 and U+0101: C4 80 and C4 81.
                    let (a, b) = (vocab.remove("Ā").unwrap(), vocab.remove("ā").unwrap());
                    vocab.insert("<unk>".into(), a);
                    vocab.insert("<0xC4>".into(), b);
                    v["model"]["unk_token"] = json!("<unk>");
                }),
            ),
            (
                "missing-bytes-dropped",
                with(&|v| {
                    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                    vocab.remove("Ā").unwrap();
                    v["model"]["merges"] = json!(v["model"]["merges"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_array().map_or(m.clone(), |p| json!(format!(
                            "{} {}",
                            p[0].as_str().unwrap(),
                            p[1].as_str().unwrap()
                        ))))
                        .collect::<Vec<_>>());
                }),
            ),
        ]
    })
}

/// Both encoders of every variant, loaded once.
fn encoders() -> &'static [(&'static str, ByteBpe, ByteBpe, tokenizers::Tokenizer)] {
    type Loaded = (&'static str, ByteBpe, ByteBpe, tokenizers::Tokenizer);
    static LOADED: OnceLock<Vec<Loaded>> = OnceLock::new();
    LOADED.get_or_init(|| {
        variants()
            .iter()
            .map(|(name, v)| {
                let ours = load(v, true).unwrap_or_else(|e| panic!("{name}: {e}"));
                let plain = load(v, false).unwrap();
                let theirs: tokenizers::Tokenizer = v.to_string().parse().unwrap();
                (*name, ours, plain, theirs)
            })
            .collect()
    })
}

/// Our encoder of a tokenizer.json (which must be a byte-level BPE).
fn load(v: &Value, add_special_tokens: bool) -> Result<ByteBpe, String> {
    ByteBpe::from_json_text(&v.to_string(), add_special_tokens).map(|b| b.expect("byte-level BPE"))
}

fn check_all(text: &str) -> Result<(), TestCaseError> {
    thread_local! {
        // One state per encoder, kept across texts (a word cache belongs to one tokenizer).
        static STATES: std::cell::RefCell<Vec<EncodeState>> = Default::default();
    }
    STATES.with_borrow_mut(|states| check_all_with(text, states))
}

fn check_all_with(text: &str, states: &mut Vec<EncodeState>) -> Result<(), TestCaseError> {
    states.resize_with(2 * encoders().len(), EncodeState::default);
    let mut states = states.iter_mut();
    for (name, ours, plain, theirs) in encoders() {
        for (add_special, enc) in [(true, ours), (false, plain)] {
            let state = states.next().unwrap();
            let want = theirs.encode(text, add_special).unwrap().get_ids().to_vec();
            let mut got = Vec::new();
            enc.encode_into(text, state, &mut got);
            prop_assert_eq!(
                &got,
                &want,
                "{} (special tokens {}) on {:?}",
                name,
                add_special,
                text
            );
            // Again, from the word cache.
            got.clear();
            enc.encode_into(text, state, &mut got);
            prop_assert_eq!(&got, &want, "{} cached on {:?}", name, text);
        }
        // The one variant with a gap in its ids counts up to the largest id.
        let gap = usize::from(*name == "missing-bytes-dropped");
        prop_assert_eq!(
            ours.vocab_size(),
            theirs.get_vocab_size(true) + gap,
            "{}",
            name
        );
    }
    Ok(())
}

#[test]
fn token_to_id_matches_the_tokenizers_crate() {
    for (name, ours, _, theirs) in encoders() {
        let vocab = theirs.get_vocab(true);
        for (token, id) in &vocab {
            assert_eq!(ours.token_to_id(token), Some(*id), "{name}: {token:?}");
        }
        for token in ["no-such-token", "<|unknown|>", "Ġnever seen", ""] {
            assert_eq!(
                ours.token_to_id(token),
                theirs.token_to_id(token),
                "{name}: {token:?}"
            );
        }
    }
}

#[test]
fn matches_the_tokenizers_crate_on_edge_cases() {
    let long_word = "а".repeat(300);
    let long_space = " ".repeat(200) + "x";
    let cases = [
        "",
        " ",
        "Hello world",
        "<|begin_of_text|>Hello<|end_of_text|><|end_of_text|> <s>x</s> <|im_start|>",
        "<|begin_of_text|",
        "кафе cafe\u{301} café мир мирный",
        "\u{0}\u{1}\u{0}a\u{1}",
        "a--b----c -- d",
        long_word.as_str(),
        long_space.as_str(),
        "12345678901234567890 ١٢٣",
    ];
    for text in cases.iter().chain(SAMPLES.iter()) {
        check_all(text).unwrap();
    }
}

proptest! {
    // The tokenizers crate is slow in a debug build: few, varied cases.
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_the_tokenizers_crate(text in "[a-zA-Zа-яА-ЯёЁ'sStTlLdDmMſ \t\n\r\u{a0}\u{2028}\u{3000}\u{301}0-9٣½/.,!?(){}<>\"_=—«»…漢字😀🇷\u{0}\u{1}|-]{0,60}") {
        check_all(&text)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(80))]
    /// Texts built from the training samples and special-token strings.
    #[test]
    fn matches_the_tokenizers_crate_on_sample_mixes(parts in proptest::collection::vec((0usize..10, 0usize..6, 0usize..90), 0..6)) {
        let specials = ["", "<|begin_of_text|>", "<s>", "<|im_start|>", "cafe\u{301}", "\r\n"];
        let text: String = parts.iter().map(|&(s, sp, cut)| {
            let sample = SAMPLES[s];
            let cut = (0..=cut.min(sample.len())).rev().find(|&c| sample.is_char_boundary(c)).unwrap();
            format!("{}{}", &sample[..cut], specials[sp])
        }).collect();
        check_all(&text)?;
    }
}

fn load_err(edit: impl Fn(&mut Value)) -> String {
    let mut v = base().clone();
    edit(&mut v);
    load(&v, true).err().expect("refused")
}

#[test]
fn unsupported_parts_are_refused_in_one_line() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["normalizer"] = json!({"type": "Lowercase"})),
         "normalizer \"Lowercase\" is not supported by vikhr's byte-level encoder (supported: none, NFC, a Sequence of NFC)"),
        (Box::new(|v| v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(false, true)]})),
         "pre_tokenizer \"Digits\" is not supported"),
        (Box::new(|v| v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            json!({"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Removed", "invert": false}),
            byte_level(false, false)]})),
         "pre_tokenizer Split behavior \"Removed\" is not supported"),
        (Box::new(|v| v["added_tokens"] = json!([json!({"id": 700, "content": "<x>", "single_word": false,
            "lstrip": true, "rstrip": false, "normalized": false, "special": true})])),
         "added token \"<x>\" has lstrip true"),
        (Box::new(|v| v["post_processor"] = json!({"type": "RobertaProcessing"})),
         "post_processor \"RobertaProcessing\" is not supported"),
        (Box::new(|v| {
            v["model"]["byte_fallback"] = json!(true);
            let vocab = v["model"]["vocab"].as_object_mut().unwrap();
            // Byte 0x00 is "Ā" (U+0100, UTF-8 C4 80): missing, and spelled by byte tokens.
            let id = vocab.remove("Ā").unwrap();
            vocab.insert("<0xC4>".into(), id);
            vocab.insert("<0x80>".into(), json!(700));
         }),
         "model byte_fallback true is not supported by vikhr's byte-level encoder where it changes ids: byte 0x00 ('Ā') is not in the vocab, and byte_fallback encodes it as <0xC4> <0x80>"),
        (Box::new(|v| v["model"]["merges"] = json!(["a b c"])), "model merge 1 (\"a b c\") is malformed"),
    ];
    for (edit, want) in cases {
        let err = load_err(edit);
        assert!(err.contains(want), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

/// The rule behind taking `byte_fallback`: the crate spells a character missing from the vocab as
/// `<0xXX>` tokens only when the vocab has all of them (then refused: other ids than without it);
/// with one of them missing it gives `unk_token`, as without `byte_fallback` (taken, same ids).
#[test]
fn byte_fallback_is_refused_only_where_the_crate_falls_back_to_byte_tokens() {
    let file = |spelled: &[&str]| {
        let mut v = base().clone();
        v["model"]["byte_fallback"] = json!(true);
        v["model"]["unk_token"] = json!("<unk>");
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove("Ā").unwrap(); // byte 0x00: U+0100, UTF-8 C4 80
        vocab.insert("<unk>".into(), id);
        let next = vocab.len();
        for (k, token) in spelled.iter().enumerate() {
            vocab.insert(token.to_string(), json!(next + k));
        }
        v
    };
    let text = "a\u{0}b";
    let crate_ids = |v: &Value| {
        let theirs: tokenizers::Tokenizer = v.to_string().parse().unwrap();
        theirs.encode(text, false).unwrap().get_ids().to_vec()
    };
    let both = file(&["<0xC4>", "<0x80>"]);
    let spelled = ["<0xC4>", "<0x80>"].map(|t| both["model"]["vocab"][t].as_u64().unwrap() as u32);
    assert!(crate_ids(&both).windows(2).any(|w| w == spelled));
    assert!(load(&both, false)
        .err()
        .unwrap()
        .contains("byte 0x00 ('Ā') is not in the vocab"));
    let one = file(&["<0xC4>"]);
    let want = crate_ids(&one);
    let unk = one["model"]["vocab"]["<unk>"].as_u64().unwrap() as u32;
    assert!(want.contains(&unk));
    let mut got = Vec::new();
    load(&one, false)
        .unwrap()
        .encode_into(text, &mut EncodeState::default(), &mut got);
    assert_eq!(got, want);
}

#[test]
fn only_byte_level_bpe_files_are_taken() {
    let taken = |v: &Value| {
        ByteBpe::from_json_text(&v.to_string(), true)
            .unwrap()
            .is_some()
    };
    let mut v = base().clone();
    assert!(taken(&v));
    v["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁"});
    assert!(!taken(&v));
    let mut v = base().clone();
    v["model"]["type"] = json!("WordPiece");
    assert!(!taken(&v));
    // A Unigram model's vocab is a list, not an object: not read as a BPE's.
    let v = json!({"model": {"type": "Unigram", "vocab": [["a", 0.0]]},
                   "pre_tokenizer": {"type": "ByteLevel"}});
    assert!(!taken(&v));
}

/// Where the time goes, on a real tokenizer and corpus (not run by default):
/// `VIKHR_TOKENIZER_JSON=... VIKHR_CORPUS=file.jsonl cargo test --release -p vikhr-core --lib
/// byte_bpe::tests::speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn speed() {
    use std::time::Instant;
    let (Ok(tj), Ok(corpus)) = (
        std::env::var("VIKHR_TOKENIZER_JSON"),
        std::env::var("VIKHR_CORPUS"),
    ) else {
        eprintln!("set VIKHR_TOKENIZER_JSON and VIKHR_CORPUS");
        return;
    };
    let t = Instant::now();
    let text = std::fs::read_to_string(&tj).unwrap();
    let enc = ByteBpe::from_json_text(&text, true).unwrap().unwrap();
    eprintln!("load: {:?}", t.elapsed());
    let texts: Vec<String> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    let mb = |d: std::time::Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let Words::Stages(stages) = &enc.words else {
        panic!("a tokenizer without a prefix space");
    };
    let mut state = EncodeState::default();
    let (mut words, t) = (0usize, Instant::now());
    for s in &texts {
        enc.split(stages, s.as_bytes(), &mut state);
        words += state.ends.len();
    }
    eprintln!("split only: {:.1} MB/s, {words} words", mb(t.elapsed()));
    // The best of a few runs: the machine is shared.
    let best = |run: &mut dyn FnMut() -> std::time::Duration| (0..3).map(|_| run()).min().unwrap();
    let cold = best(&mut || {
        let (mut state, mut out, t) = (EncodeState::default(), Vec::new(), Instant::now());
        for s in &texts {
            out.clear();
            enc.encode_into(s, &mut state, &mut out);
        }
        t.elapsed()
    });
    let warm = best(&mut || {
        let (mut out, t) = (Vec::new(), Instant::now());
        for s in &texts {
            out.clear();
            enc.encode_into(s, &mut state, &mut out);
        }
        t.elapsed()
    });
    eprintln!(
        "encode: cold cache {:.1} MB/s, warm {:.1} MB/s",
        mb(cold),
        mb(warm)
    );
    let mut distinct: rustc_hash::FxHashSet<&[u8]> = Default::default();
    let mut split_state = EncodeState::default();
    for s in &texts {
        enc.split(stages, s.as_bytes(), &mut split_state);
        let mut start = 0;
        for &e in &split_state.ends {
            distinct.insert(&s.as_bytes()[start..e]);
            start = e;
        }
    }
    let distinct: Vec<&[u8]> = distinct.into_iter().collect();
    let d = best(&mut || {
        let (mut scratch, mut out, t) = (BpeScratch::default(), Vec::new(), Instant::now());
        for w in &distinct {
            out.clear();
            enc.bpe.encode_word(w, &mut scratch, &mut out);
        }
        t.elapsed()
    });
    let n = distinct.len();
    let b: usize = distinct.iter().map(|w| w.len()).sum();
    eprintln!(
        "BPE of the {n} distinct words ({b} bytes): {d:?}, {:?} per word",
        d / n as u32
    );
}
