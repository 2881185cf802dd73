//! Reading a `tokenizer.json` into the parts of [`super::ByteBpe`], refusing (with one line
//! naming the part and its value) every component whose effect on the ids is not reproduced.

use std::borrow::Cow;
use std::fmt;

use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::merge::{byte_to_char, Bpe, ByteDecoder, BytesMap, MergeTable, WholeWords, NO_ID};
use super::split::{Scanner, Splitter};

const ENCODER: &str = "vikhr's byte-level encoder";

/// How a text is cut into words: `Split` stages, then `ByteLevel`'s own steps.
pub(super) struct PreTokenizer {
    /// The `Split` pre-tokenizers, in order.
    pub(super) splits: Vec<Splitter>,
    /// `ByteLevel.add_prefix_space`: a space before every word that does not start with one.
    pub(super) add_prefix_space: bool,
    /// `ByteLevel.use_regex`: GPT-2's pattern cuts the words once more.
    pub(super) byte_level_regex: bool,
}

/// An added token, as listed in `added_tokens`.
pub(super) struct AddedToken {
    pub(super) content: String,
    pub(super) id: u32,
    /// Matched on the normalized text (else on the raw text, before normalization).
    pub(super) normalized: bool,
}

/// The vocabulary: by the bytes each string stands for, and by string for the (rare) strings
/// outside GPT-2's byte alphabet, which no merge of bytes can produce.
pub(super) struct Vocab {
    pub(super) bytes: BytesMap,
    other: FxHashMap<String, u32>,
    decoder: ByteDecoder,
}

impl Vocab {
    /// The id of the vocabulary string `s`.
    pub(super) fn get(&self, s: &str) -> Option<u32> {
        let mut buf = Vec::new();
        if self.decoder.decode_into(s, &mut buf) {
            self.bytes.get(&buf)
        } else {
            self.other.get(s).copied()
        }
    }

    /// Number of distinct strings.
    pub(super) fn len(&self) -> usize {
        self.bytes.len() + self.other.len()
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes.ids().chain(self.other.values().copied())
    }
}

/// The model, before its vocabulary is handed to the BPE (the added tokens need it first).
pub(super) struct Model {
    pub(super) vocab: Vocab,
    byte_ids: [u32; 256],
    unk: Option<u32>,
    fuse_unk: bool,
    merges: MergeTable,
    ignore_merges: bool,
}

impl Model {
    /// The encoder, and the vocabulary kept for looking tokens up by string.
    pub(super) fn into_bpe(self) -> (Bpe, Vocab) {
        let bpe = Bpe {
            all_bytes_known: !self.byte_ids.contains(&NO_ID),
            byte_ids: self.byte_ids,
            unk: self.unk,
            fuse_unk: self.fuse_unk,
            merges: self.merges,
            whole_words: self
                .ignore_merges
                .then(|| WholeWords::new(self.vocab.bytes.clone())),
        };
        (bpe, self.vocab)
    }
}

/// A `tokenizer.json`: its components as JSON values, the model still as raw JSON text (read
/// with borrowed strings only when it is a byte-level BPE).
#[derive(Deserialize)]
pub(super) struct TokenizerFile<'a> {
    #[serde(borrow)]
    pub(super) model: &'a RawValue,
    #[serde(default)]
    pub(super) normalizer: Value,
    #[serde(default)]
    pub(super) pre_tokenizer: Value,
    #[serde(default)]
    pub(super) post_processor: Value,
    #[serde(default)]
    pub(super) added_tokens: Value,
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("?")
}

/// True when the pre-tokenizer is byte-level (`ByteLevel`, alone or in a `Sequence`): with a
/// BPE model, a file for this encoder.
pub(super) fn has_byte_level_pre_tokenizer(file: &TokenizerFile) -> bool {
    let pre = &file.pre_tokenizer;
    match type_of(pre) {
        "ByteLevel" => true,
        "Sequence" => pre["pretokenizers"]
            .as_array()
            .is_some_and(|steps| steps.iter().any(|p| type_of(p) == "ByteLevel")),
        _ => false,
    }
}

fn flag(v: &Value, key: &str, default: bool) -> Result<bool, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key} is {other}, expected true or false")),
    }
}

/// True when the normalizer is NFC; no normalizer is false.
pub(super) fn normalizer(v: &Value) -> Result<bool, String> {
    match type_of(v) {
        _ if v.is_null() => Ok(false),
        "NFC" => Ok(true),
        "Sequence" => {
            let mut nfc = false;
            for n in v["normalizers"].as_array().into_iter().flatten() {
                nfc |= normalizer(n)?;
            }
            Ok(nfc)
        }
        other => Err(format!(
            "normalizer {other:?} is not supported by {ENCODER} (supported: none, NFC, a Sequence of NFC)"
        )),
    }
}

fn split(v: &Value) -> Result<Splitter, String> {
    let behavior = v["behavior"].as_str().unwrap_or("?");
    if behavior != "Isolated" {
        return Err(format!(
            "pre_tokenizer Split behavior {behavior:?} is not supported by {ENCODER} (supported: Isolated)"
        ));
    }
    if flag(v, "invert", false)? {
        return Err(format!(
            "pre_tokenizer Split invert true is not supported by {ENCODER}"
        ));
    }
    match (v["pattern"].get("Regex"), v["pattern"].get("String")) {
        (Some(Value::String(re)), _) => Splitter::regex(re),
        (_, Some(Value::String(s))) => Splitter::literal(s),
        _ => Err(format!(
            "pre_tokenizer Split pattern {} is neither a Regex nor a String",
            v["pattern"]
        )),
    }
}

/// `ByteLevel`, or a `Sequence` of `Split`s ending with `ByteLevel`.
pub(super) fn pre_tokenizer(v: &Value) -> Result<PreTokenizer, String> {
    let steps: Vec<&Value> = match type_of(v) {
        "Sequence" => v["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![v],
    };
    let unsupported = |t: &str| {
        format!(
            "pre_tokenizer {t:?} is not supported by {ENCODER} (supported: ByteLevel, or a Sequence of Split steps then ByteLevel)"
        )
    };
    let Some((last, splits)) = steps.split_last() else {
        return Err(unsupported("empty Sequence"));
    };
    if type_of(last) != "ByteLevel" {
        return Err(unsupported(type_of(last)));
    }
    let splits = splits
        .iter()
        .map(|s| match type_of(s) {
            "Split" => split(s),
            other => Err(unsupported(other)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PreTokenizer {
        splits,
        add_prefix_space: flag(last, "add_prefix_space", true)?,
        byte_level_regex: flag(last, "use_regex", true)?,
    })
}

impl PreTokenizer {
    /// The splitters in the order they run when no prefix space is added.
    pub(super) fn stages(self) -> Vec<Splitter> {
        let mut stages = self.splits;
        if self.byte_level_regex {
            stages.push(Splitter::Scan(Scanner::Gpt2));
        }
        stages
    }
}

/// The ids a template adds before and after the text (`TemplateProcessing`, or a `Sequence` of
/// processors; the others add none).
pub(super) fn post_processor(v: &Value) -> Result<(Vec<u32>, Vec<u32>), String> {
    match type_of(v) {
        _ if v.is_null() => Ok((Vec::new(), Vec::new())),
        "ByteLevel" => Ok((Vec::new(), Vec::new())),
        "TemplateProcessing" => template(v),
        "Sequence" => {
            let (mut before, mut after) = (Vec::new(), Vec::new());
            for p in v["processors"].as_array().into_iter().flatten() {
                // Each processor wraps what the previous ones made.
                let (b, a) = post_processor(p)?;
                before.splice(0..0, b);
                after.extend(a);
            }
            Ok((before, after))
        }
        other => Err(format!(
            "post_processor {other:?} is not supported by {ENCODER} (supported: none, ByteLevel, TemplateProcessing, a Sequence of these)"
        )),
    }
}

fn template(v: &Value) -> Result<(Vec<u32>, Vec<u32>), String> {
    let bad = |what: String| format!("post_processor TemplateProcessing {what}");
    let items = v["single"]
        .as_array()
        .ok_or_else(|| bad(format!("single {} is not a list", v["single"])))?;
    let (mut before, mut after, mut seen_a) = (Vec::new(), Vec::new(), false);
    for item in items {
        if let Some(seq) = item.get("Sequence") {
            if seq["id"] != "A" || seen_a {
                return Err(bad(format!(
                    "single template item {item} is not supported by {ENCODER} (only one $A)"
                )));
            }
            seen_a = true;
        } else if let Some(name) = item.get("SpecialToken").and_then(|s| s["id"].as_str()) {
            let ids = v["special_tokens"][name]["ids"]
                .as_array()
                .ok_or_else(|| bad(format!("special token {name:?} has no ids")))?;
            let target = if seen_a { &mut after } else { &mut before };
            for id in ids {
                let id = id
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| bad(format!("special token {name:?} has id {id}")))?;
                target.push(id);
            }
        } else {
            return Err(bad(format!(
                "single template item {item} is not understood"
            )));
        }
    }
    if !seen_a {
        return Err(bad("single template has no $A".into()));
    }
    Ok((before, after))
}

/// A JSON string, borrowed from the file when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// `model.vocab`: (string, id) in file order.
struct VocabList<'a>(Vec<(Cow<'a, str>, u32)>);

impl<'de: 'a, 'a> Deserialize<'de> for VocabList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = VocabList<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string: id")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((k, id)) = map.next_entry::<Str<'a>, u32>()? {
                    list.push((k.0, id));
                }
                Ok(VocabList(list))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// One entry of `model.merges`: `"a b"` or `["a", "b"]`; `#version` lines are skipped, and a
/// malformed entry is kept (as JSON text) to be reported by rank.
enum MergeEntry<'a> {
    Pair(Cow<'a, str>, Cow<'a, str>),
    Version,
    Malformed(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for MergeEntry<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        /// As the crate reads merges.txt: exactly two parts separated by one space.
        fn from_line<'a>(a: Cow<'a, str>, b: Cow<'a, str>, line: &str) -> MergeEntry<'a> {
            if line.starts_with("#version") {
                MergeEntry::Version
            } else if b.contains(' ') {
                MergeEntry::Malformed(format!("{line:?}"))
            } else {
                MergeEntry::Pair(a, b)
            }
        }
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MergeEntry<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"a b\" or [\"a\", \"b\"]")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(match s.split_once(' ') {
                    Some((a, b)) => from_line(Cow::Borrowed(a), Cow::Borrowed(b), s),
                    None => MergeEntry::Malformed(format!("{s:?}")),
                })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(match s.split_once(' ') {
                    Some((a, b)) => from_line(a.to_string().into(), b.to_string().into(), s),
                    None => MergeEntry::Malformed(format!("{s:?}")),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let parts: Vec<Str<'a>> = std::iter::from_fn(|| seq.next_element().transpose())
                    .collect::<Result<_, _>>()?;
                Ok(match <[Str; 2]>::try_from(parts) {
                    Ok([a, b]) => MergeEntry::Pair(a.0, b.0),
                    Err(parts) => MergeEntry::Malformed(format!("a list of {}", parts.len())),
                })
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The `BPE` model as written in the file: its vocabulary and merges still raw JSON (read on two
/// threads, with strings borrowed from the file).
#[derive(Deserialize)]
struct ModelFile<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    vocab: &'a RawValue,
    #[serde(borrow)]
    merges: &'a RawValue,
    #[serde(default)]
    dropout: Value,
    #[serde(default)]
    unk_token: Value,
    #[serde(default)]
    continuing_subword_prefix: Value,
    #[serde(default)]
    end_of_word_suffix: Value,
    #[serde(default)]
    fuse_unk: Value,
    #[serde(default)]
    byte_fallback: Value,
    #[serde(default)]
    ignore_merges: Value,
}

impl ModelFile<'_> {
    /// The options as a JSON object (to read them as the other components are read).
    fn options(&self) -> Value {
        json!({
            "dropout": self.dropout, "unk_token": self.unk_token,
            "continuing_subword_prefix": self.continuing_subword_prefix,
            "end_of_word_suffix": self.end_of_word_suffix, "fuse_unk": self.fuse_unk,
            "byte_fallback": self.byte_fallback, "ignore_merges": self.ignore_merges,
        })
    }
}

fn optional_str<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("model {key} is {other}, expected a string or null")),
    }
}

/// Refuse the BPE options that change ids in ways this encoder does not reproduce.
fn check_model_options(m: &Value) -> Result<(), String> {
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if let Some(s) = optional_str(m, key)?.filter(|s| !s.is_empty()) {
            return Err(format!(
                "model {key} {s:?} is not supported by {ENCODER} (supported: null)"
            ));
        }
    }
    match m.get("dropout") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_f64() == Some(0.0) => {}
        Some(d) => {
            return Err(format!(
                "model dropout {d} is not supported by {ENCODER} (supported: null)"
            ))
        }
    }
    Ok(())
}

/// Refuse `byte_fallback` where it would change an encoding. The crate's BPE looks each character
/// of a word up in the vocab; only for one that is not there does `byte_fallback` act: it spells the
/// character's UTF-8 bytes as `<0xXX>` tokens when the vocab has every one of them, and otherwise
/// goes on to `unk_token` as it would without `byte_fallback`. After `ByteLevel`, the characters of
/// a word are those of GPT-2's 256-character byte alphabet, so `byte_fallback` changes nothing when
/// the vocab has all 256 (Llama-3, Qwen2 and tekken files do), nor for a missing one that lacks
/// one of its `<0xXX>` tokens; a missing one with all of them is refused.
fn check_byte_fallback(vocab: &Vocab, byte_ids: &[u32; 256]) -> Result<(), String> {
    let alphabet = byte_to_char();
    for (byte, _) in byte_ids.iter().enumerate().filter(|(_, &id)| id == NO_ID) {
        let c = alphabet[byte];
        let mut utf8 = [0u8; 4];
        let spelled: Vec<String> = c
            .encode_utf8(&mut utf8)
            .bytes()
            .map(|b| format!("<0x{b:02X}>"))
            .collect();
        if spelled.iter().all(|t| vocab.get(t).is_some()) {
            return Err(format!(
                "model byte_fallback true is not supported by {ENCODER} where it changes ids: byte \
                 {byte:#04x} ({c:?}) is not in the vocab, and byte_fallback encodes it as {} \
                 (supported: every byte in the vocab, or byte_fallback false)",
                spelled.join(" ")
            ));
        }
    }
    Ok(())
}

/// The merges as `(left, right, merged)` ids in rank order, keeping only those over the byte
/// alphabet (the others can never apply to bytes). Resolved on up to 4 threads: it is most of
/// the loading time of a large vocabulary (each merge is three lookups).
fn merge_ids(entries: &[MergeEntry], vocab: &Vocab) -> Result<Vec<(u32, u32, u32)>, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads == 1 || entries.len() < 50_000 {
        return merge_ids_from(entries, 0, vocab);
    }
    let chunk = entries.len().div_ceil(threads);
    let parts: Vec<Result<Vec<_>, String>> = std::thread::scope(|s| {
        let workers: Vec<_> = entries
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| s.spawn(move || merge_ids_from(part, k * chunk, vocab)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("resolving merges panicked"))
            .collect()
    });
    let mut merges = Vec::with_capacity(entries.len());
    for part in parts {
        merges.extend(part?);
    }
    Ok(merges)
}

/// [`merge_ids`] of `entries`, the first of which is merge number `first` (0-based) of the file.
fn merge_ids_from(
    entries: &[MergeEntry],
    first: usize,
    vocab: &Vocab,
) -> Result<Vec<(u32, u32, u32)>, String> {
    let mut merges = Vec::with_capacity(entries.len());
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for (k, entry) in entries.iter().enumerate() {
        let (a, b) = match entry {
            MergeEntry::Pair(a, b) => (a, b),
            MergeEntry::Version => continue,
            MergeEntry::Malformed(m) => {
                return Err(format!("model merge {} ({m}) is malformed", first + k + 1))
            }
        };
        let missing = |s: &str| format!("model merge {a:?} {b:?}: {s:?} is not in the vocab");
        if vocab.decoder.decode_into(a, &mut left) && vocab.decoder.decode_into(b, &mut right) {
            let l = vocab.bytes.get(&left).ok_or_else(|| missing(a))?;
            let r = vocab.bytes.get(&right).ok_or_else(|| missing(b))?;
            left.extend_from_slice(&right);
            let merged = vocab.bytes.get(&left);
            merges.push((l, r, merged.ok_or_else(|| missing(&format!("{a}{b}")))?));
        } else {
            for s in [a.to_string(), b.to_string(), format!("{a}{b}")] {
                vocab.get(&s).ok_or_else(|| missing(&s))?;
            }
        }
    }
    Ok(merges)
}

/// The vocabulary (and the id of each single byte) from the raw JSON of `model.vocab`.
fn read_vocab(raw: &RawValue) -> Result<(Vocab, [u32; 256]), String> {
    let list: VocabList =
        serde_json::from_str(raw.get()).map_err(|e| format!("model vocab is malformed: {e}"))?;
    let mut vocab = Vocab {
        bytes: BytesMap::with_capacity(list.0.len()),
        other: FxHashMap::default(),
        decoder: ByteDecoder::new(),
    };
    let mut byte_ids = [NO_ID; 256];
    let mut buf = Vec::new();
    // A key listed twice keeps its last id, as in any JSON object read into a map.
    for (s, id) in list.0 {
        if id == NO_ID {
            return Err(format!("model vocab entry {s:?} has id {id}"));
        }
        if vocab.decoder.decode_into(&s, &mut buf) {
            if let [b] = buf[..] {
                byte_ids[b as usize] = id;
            }
            vocab.bytes.insert(&buf, id);
        } else {
            vocab.other.insert(s.into_owned(), id);
        }
    }
    Ok((vocab, byte_ids))
}

/// The `BPE` model, from the raw JSON of the file's "model" (`None`: not a BPE model).
pub(super) fn model(raw: &RawValue) -> Result<Option<Model>, String> {
    let file: ModelFile = match serde_json::from_str(raw.get()) {
        Ok(file) => file,
        // Another model's fields need not parse as a BPE's: tell the two apart by the type.
        Err(e) => {
            #[derive(Deserialize)]
            struct Kind {
                #[serde(rename = "type", default)]
                kind: Value,
            }
            let kind = serde_json::from_str::<Kind>(raw.get()).map(|k| k.kind);
            return match kind {
                Ok(k) if k == "BPE" => Err(format!("model is malformed: {e}")),
                _ => Ok(None),
            };
        }
    };
    if file.kind.as_deref() != Some("BPE") {
        return Ok(None);
    }
    let options = file.options();
    check_model_options(&options)?;
    let (vocab, entries) = std::thread::scope(|s| {
        let merges = s.spawn(|| serde_json::from_str::<Vec<MergeEntry>>(file.merges.get()));
        let vocab = read_vocab(file.vocab);
        (vocab, merges.join().expect("reading merges panicked"))
    });
    let (vocab, byte_ids) = vocab?;
    if flag(&options, "byte_fallback", false)? {
        check_byte_fallback(&vocab, &byte_ids)?;
    }
    let entries = entries.map_err(|e| format!("model merges are malformed: {e}"))?;
    let merges = merge_ids(&entries, &vocab)?;
    let unk = match optional_str(&options, "unk_token")? {
        None => None,
        Some(u) => Some(
            vocab
                .get(u)
                .ok_or_else(|| format!("model unk_token {u:?} is not in the vocab"))?,
        ),
    };
    Ok(Some(Model {
        byte_ids,
        unk,
        fuse_unk: flag(&options, "fuse_unk", false)?,
        merges: MergeTable::new(&merges),
        ignore_merges: flag(&options, "ignore_merges", false)?,
        vocab,
    }))
}

/// The `added_tokens`, with the ids the tokenizers crate gives them: an added token that is in
/// the model's vocabulary gets that id, the others the next free ids from the vocabulary's size
/// on, in list order.
pub(super) fn added_tokens(list: &Value, vocab: &Vocab) -> Result<Vec<AddedToken>, String> {
    let mut tokens: Vec<AddedToken> = Vec::new();
    let mut flags_of: FxHashMap<String, &Value> = FxHashMap::default();
    let mut next_id = vocab.len() as u32;
    for t in list.as_array().into_iter().flatten() {
        let content = t["content"]
            .as_str()
            .ok_or_else(|| format!("added token {t} has no content"))?;
        for key in ["single_word", "lstrip", "rstrip"] {
            if flag(t, key, false)? {
                return Err(format!(
                    "added token {content:?} has {key} true, which {ENCODER} does not support"
                ));
            }
        }
        if content.is_empty() {
            continue;
        }
        if let Some(earlier) = flags_of.get(content) {
            if flags(earlier) != flags(t) {
                return Err(format!(
                    "added token {content:?} is listed twice with different flags"
                ));
            }
            continue;
        }
        flags_of.insert(content.to_string(), t);
        let id = match vocab.get(content) {
            Some(id) => id,
            None => {
                next_id += 1;
                next_id - 1
            }
        };
        tokens.push(AddedToken {
            content: content.to_string(),
            id,
            // The crate's default: special tokens match the raw text, others the normalized.
            normalized: flag(t, "normalized", !flag(t, "special", false)?)?,
        });
    }
    Ok(tokens)
}

fn flags(t: &Value) -> [Option<&Value>; 5] {
    ["single_word", "lstrip", "rstrip", "normalized", "special"].map(|k| t.get(k))
}
