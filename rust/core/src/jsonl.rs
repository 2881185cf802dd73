//! JSON Lines input: plain, gzip (`.gz`) or zstd (`.zst`, `.zstd`) files read as batches of
//! whole lines, and extraction of string fields from one line without building the whole object.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use memchr::memmem;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Compressions the reader does not decode, by the suffix of a file name (read as plain text,
/// their bytes would be "not UTF-8").
const UNSUPPORTED_COMPRESSIONS: [&str; 6] = [".xz", ".lzma", ".bz2", ".lz4", ".zip", ".7z"];

/// Why an input named `path` cannot be read: a compression the reader does not decode.
pub fn check_compression_name(path: &Path) -> Result<(), String> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    match UNSUPPORTED_COMPRESSIONS.iter().find(|s| name.ends_with(*s)) {
        Some(suffix) => Err(format!(
            "{}: unsupported compression ({suffix}); decompress it or recompress with gzip/zstd",
            path.display()
        )),
        None => Ok(()),
    }
}

/// The compression whose data `head` (the first bytes of a file) starts with, and whether the
/// reader decodes it: (what it is, the suffix a file of it takes, decoded).
fn compression_of(head: &[u8]) -> Option<(&'static str, &'static str, bool)> {
    // bzip2: "BZh", the block size, then a block's magic or the end of an empty stream.
    let bzip2 = head.len() >= 10
        && head.starts_with(b"BZh")
        && (b'1'..=b'9').contains(&head[3])
        && [b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90"]
            .iter()
            .any(|m| head[4..10] == m[..]);
    if head.starts_with(b"\x1f\x8b") {
        Some(("gzip", ".gz", true))
    } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
        Some(("zstd", ".zst", true))
    } else if head.starts_with(b"\xfd7zXZ\x00") {
        Some(("xz", ".xz", false))
    } else if bzip2 {
        Some(("bzip2", ".bz2", false))
    } else {
        None
    }
}

/// Why a file named as plain text cannot be read as text, from its first bytes `head`: compressed
/// data under a plain name (read as text it was "not UTF-8" at line 1). As the Python reader says it.
pub fn check_plain_content(path: &Path, head: &[u8]) -> Result<(), String> {
    match compression_of(head) {
        Some((what, suffix, true)) => Err(format!(
            "{} holds {what}-compressed data: name it {}{suffix}",
            path.display(),
            path.file_name().unwrap_or_default().to_string_lossy()
        )),
        Some((what, _, false)) => Err(format!(
            "{} holds {what}-compressed data, which the readers do not decode: decompress it, or \
             recompress it with gzip/zstd",
            path.display()
        )),
        None => Ok(()),
    }
}

/// Open a (possibly compressed) input file, choosing the decoder from the file name. A file named
/// as plain text whose first bytes are compressed data is refused ([`io::ErrorKind::InvalidData`],
/// see [`check_plain_content`]). Once `stop` is set, a read that waits on a pipe, a FIFO or a
/// terminal (a writer that sends nothing) ends with an error within [`STOP_POLL_MS`].
pub fn open_input(path: &Path, stop: Arc<AtomicBool>) -> io::Result<Box<dyn BufRead + Send>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let f = StoppableFile::open(path, stop).map_err(named)?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let raw: Box<dyn Read + Send> = if name.ends_with(".gz") {
        Box::new(GzMembers::new(BufReader::with_capacity(1 << 20, f)))
    } else if name.ends_with(".zst") || name.ends_with(".zstd") {
        // A file of no bytes holds no frame and no line, as a .gz of no member does here and both
        // do in the Python readers (the decoder said "incomplete frame": damaged or truncated).
        let meta = f.file.metadata().map_err(named)?;
        if meta.is_file() && meta.len() == 0 {
            return Ok(Box::new(io::empty()));
        }
        Box::new(zstd::stream::read::Decoder::new(f)?)
    } else {
        // The first read of the file, looked at once: no cost to the lines.
        let mut r = BufReader::with_capacity(1 << 20, f);
        check_plain_content(path, r.fill_buf().map_err(named)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        return Ok(Box::new(r));
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, raw)))
}

/// How often a read waiting on a pipe looks at its stop flag.
pub const STOP_POLL_MS: i32 = 100;

/// An input file whose reads, where they may wait for a writer (anything but a regular file), wait
/// in `poll` so that a stop is seen: a blocking `read` would wait for the writer's next bytes (or
/// its end) however long that is, and a stop with it.
struct StoppableFile {
    file: File,
    stop: Arc<AtomicBool>,
    waits: bool,
}

impl StoppableFile {
    fn open(path: &Path, stop: Arc<AtomicBool>) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let kind = std::fs::metadata(path)?.file_type();
        let waits = kind.is_fifo() || kind.is_char_device() || kind.is_socket();
        // Not blocking: a FIFO's open would wait for a writer to open it, out of reach of the stop;
        // `poll` waits for the writer instead (it reports nothing until one has opened and written
        // or closed: the blocking open's end of file, the same).
        let flags = if waits { libc::O_NONBLOCK } else { 0 };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)?;
        Ok(StoppableFile { file, stop, waits })
    }
}

impl Read for StoppableFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        if !self.waits {
            return self.file.read(buf);
        }
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(io::Error::other("stopped while waiting for input"));
            }
            let mut fd = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
            let ready = unsafe { libc::poll(&mut fd, 1, STOP_POLL_MS) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if ready == 0 {
                continue;
            }
            match self.file.read(buf) {
                // Another reader of the pipe took the bytes first: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

/// The data of every member of a gzip stream, the members read one after another as `gzip -d`
/// and Python's `gzip` read them: zero bytes between or after members (tape and block-device
/// padding) are skipped, anything else must be a further member.
pub struct GzMembers<R: BufRead> {
    member: Option<flate2::bufread::GzDecoder<R>>,
    rest: Option<R>, // between members
}

impl<R: BufRead> GzMembers<R> {
    pub fn new(reader: R) -> Self {
        GzMembers {
            member: None,
            rest: Some(reader),
        }
    }

    /// Skips zero padding; true when a further member starts.
    fn another_member(reader: &mut R) -> io::Result<bool> {
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(false);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            if zeros < buf.len() {
                reader.consume(zeros);
                return Ok(true);
            }
            reader.consume(zeros);
        }
    }
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(member) = self.member.as_mut() {
                let n = member.read(out)?;
                if n > 0 {
                    return Ok(n);
                }
                self.rest = self.member.take().map(|m| m.into_inner());
            }
            let Some(mut reader) = self.rest.take() else {
                return Ok(0);
            };
            if !Self::another_member(&mut reader)? {
                return Ok(0);
            }
            self.member = Some(flate2::bufread::GzDecoder::new(reader));
        }
    }
}

/// A run of consecutive whole lines of one input file.
#[derive(Debug, Default, Clone)]
pub struct LineBatch {
    /// Index of the input file.
    pub file: usize,
    /// 1-based number of the first line in the batch.
    pub first_line: u64,
    pub data: Vec<u8>,
    /// End offset (exclusive, newline stripped) of each line in `data`.
    pub ends: Vec<usize>,
    starts: Vec<usize>,
}

impl LineBatch {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn line(&self, i: usize) -> &[u8] {
        &self.data[self.starts[i]..self.ends[i]]
    }

    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.line(i))
    }
}

const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Reads a file as [`LineBatch`]es of about `batch_bytes` each (never splitting a line; a
/// byte-order mark at the start of the file is dropped).
pub struct LineBatcher {
    reader: Box<dyn BufRead + Send>,
    file: usize,
    next_line: u64,
    batch_bytes: usize,
    done: bool,
}

impl LineBatcher {
    pub fn new(reader: Box<dyn BufRead + Send>, file: usize, batch_bytes: usize) -> Self {
        LineBatcher {
            reader,
            file,
            next_line: 1,
            batch_bytes: batch_bytes.max(1),
            done: false,
        }
    }

    /// The next batch, `Ok(None)` at the end of the file.
    pub fn next_batch(&mut self) -> io::Result<Option<LineBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut b = LineBatch {
            file: self.file,
            first_line: self.next_line,
            ..Default::default()
        };
        while b.data.len() < self.batch_bytes {
            let start = b.data.len();
            let n = self.reader.read_until(b'\n', &mut b.data)?;
            if n == 0 {
                self.done = true;
                break;
            }
            let mut end = b.data.len();
            if b.data[end - 1] == b'\n' {
                end -= 1;
            }
            // A UTF-8 byte-order mark opens some files written on Windows: not part of line 1.
            let start = if self.next_line == 1 && b.data[start..end].starts_with(UTF8_BOM) {
                start + UTF8_BOM.len()
            } else {
                start
            };
            b.starts.push(start);
            b.ends.push(end);
            self.next_line += 1;
        }
        Ok((!b.is_empty()).then_some(b))
    }
}

/// Why a line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not UTF-8: the first byte that is not.
    NotUtf8(u8),
    BadJson(String),
    /// The key is absent.
    MissingKey(String),
    /// The key's value is not a string: what it is.
    NotString(String, NotText),
}

/// What a JSON value that is not a string is, said where text was wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotText {
    Null,
    Bool,
    Number,
    Object,
    List,
    /// A list of `{"role", "content"}` objects: a chat in the layout `vikhr sft prepare` reads.
    ChatMessages,
    /// A list of `{"from", "value"}` objects: a ShareGPT chat, which `vikhr sft build` converts.
    ShareGptTurns,
    /// A list of this many strings: a document kept as its sentences or paragraphs.
    Strings(usize),
}

impl NotText {
    /// True for a chat: not text to pre-tokenize, but what the SFT commands read.
    pub fn is_chat(self) -> bool {
        matches!(self, NotText::ChatMessages | NotText::ShareGptTurns)
    }

    /// True where the message for it says how to fix the line (a chat: the commands that read
    /// chats; a list of strings: joining them), so no other field is to be suggested.
    pub fn says_its_fix(self) -> bool {
        self.is_chat() || matches!(self, NotText::Strings(_))
    }
}

impl fmt::Display for NotText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotText::Strings(1) => "a list of 1 string",
            NotText::Strings(n) => return write!(f, "a list of {n} strings"),
            NotText::Null => "null",
            NotText::Bool => "a bool",
            NotText::Number => "a number",
            NotText::Object => "an object",
            NotText::List => "a list",
            NotText::ChatMessages => "a list of chat messages (role/content)",
            NotText::ShareGptTurns => "a list of ShareGPT turns (from/value)",
        })
    }
}

/// What the JSON value `value` is when it is not a string; `None` for a string, `Err` for text
/// that is not one JSON value. Its numbers are not read (`1e400` is a number, as in a line).
pub fn not_text(value: &str) -> Result<Option<NotText>, String> {
    let got = serde_json::from_str::<&RawValue>(value)
        .and_then(value_of_raw)
        .map_err(|e| json_error(value, &e))?;
    Ok(match got {
        MaybeStr::Str(_) => None,
        MaybeStr::Other(kind) => Some(kind),
    })
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // As the Python reader says it: a file in a legacy encoding is the usual cause.
            LineError::NotUtf8(b) => write!(
                f,
                "not UTF-8 (byte 0x{b:02x}); re-encode it as UTF-8, e.g. iconv -f cp1251 -t utf-8"
            ),
            LineError::BadJson(e) => write!(f, "not valid JSON ({e})"),
            LineError::MissingKey(k) => write!(f, "no string field {k:?}"),
            LineError::NotString(k, NotText::ChatMessages) => write!(
                f,
                "field {k:?} is {}, not a string: chats are encoded with vikhr sft prepare, not \
                 pre-tokenized as text; see docs/sft.md",
                NotText::ChatMessages
            ),
            LineError::NotString(k, NotText::ShareGptTurns) => write!(
                f,
                "field {k:?} is {}, not a string: chats are converted with vikhr sft build and \
                 encoded with vikhr sft prepare, not pre-tokenized as text; see docs/sft.md",
                NotText::ShareGptTurns
            ),
            // The field is the text, kept in pieces: the way to one string per document.
            LineError::NotString(k, kind @ NotText::Strings(_)) => write!(
                f,
                "field {k:?} is {kind}, not one string: join them into one string per document, \
                 e.g. jq -c '{} |= join(\"\\n\")' IN.jsonl > OUT.jsonl",
                jq_path(k)
            ),
            LineError::NotString(k, kind) => write!(f, "field {k:?} is {kind}, not a string"),
        }
    }
}

/// jq's path to the field `key`: `.text`, or `.["a key"]` for a key that is no identifier.
fn jq_path(key: &str) -> String {
    let mut chars = key.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        format!(".{key}")
    } else {
        format!(".[{key:?}]")
    }
}

/// A string that borrows from the line when it has no escapes.
struct CowStr<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string value, or what any other JSON value is (its contents skipped over).
enum MaybeStr<'de> {
    Str(Cow<'de, str>),
    Other(NotText),
}

impl<'de> de::Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr::Str(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other(NotText::Bool))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other(NotText::Number))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other(NotText::Number))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other(NotText::Number))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr::Other(NotText::Null))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                list_kind(|| seq.next_element::<TurnKeys>()).map(MaybeStr::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr::Other(NotText::Object))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a list is, from the keys of its elements given one by one by `next`: a chat is said as one
/// (what a text field holds in a chat file), and so is a list of strings (a document in pieces).
fn list_kind<E>(mut next: impl FnMut() -> Result<Option<TurnKeys>, E>) -> Result<NotText, E> {
    let (mut turns, mut messages, mut sharegpt, mut strings) = (0usize, true, true, true);
    while let Some(keys) = next()? {
        turns += 1;
        messages &= keys.role && keys.content;
        sharegpt &= keys.from && keys.value;
        strings &= keys.string;
    }
    Ok(match turns {
        0 => NotText::List,
        _ if messages => NotText::ChatMessages,
        _ if sharegpt => NotText::ShareGptTurns,
        _ if strings => NotText::Strings(turns),
        _ => NotText::List,
    })
}

/// The value of the JSON text `raw` (valid JSON, its strings without a lone surrogate escape), its
/// numbers not read: a number past a double (`1e400`, an integer of thousands of digits), which
/// serde_json refuses as "out of range" where it reads one, is a number as Python's json reads it
/// (±inf), in a text field or in a list there.
fn value_of_raw(raw: &RawValue) -> Result<MaybeStr<'_>, serde_json::Error> {
    let text = raw.get();
    Ok(MaybeStr::Other(match text.as_bytes().first() {
        Some(b'"') => return serde_json::from_str::<CowStr>(text).map(|s| MaybeStr::Str(s.0)),
        Some(b'n') => NotText::Null,
        Some(b't' | b'f') => NotText::Bool,
        Some(b'{') => NotText::Object,
        Some(b'[') => {
            let items = serde_json::from_str::<Vec<&RawValue>>(text)?;
            let mut items = items.into_iter();
            // A turn's values are skipped over unread: only an element that is an object is read.
            list_kind(|| {
                items
                    .next()
                    .map(|item| match item.get().as_bytes().first() {
                        Some(b'{') => serde_json::from_str::<TurnKeys>(item.get()),
                        string => Ok(TurnKeys {
                            string: string == Some(&b'"'),
                            ..TurnKeys::default()
                        }),
                    })
                    .transpose()
            })?
        }
        _ => NotText::Number,
    }))
}

/// Which keys of a chat turn a list element has (all false for an element that is no object), and
/// whether it is a string.
#[derive(Default)]
struct TurnKeys {
    role: bool,
    content: bool,
    from: bool,
    value: bool,
    string: bool,
}

impl<'de> de::Deserialize<'de> for TurnKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TurnKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            // Anything but an object is no turn (its contents skipped over).
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(TurnKeys {
                    string: true,
                    ..TurnKeys::default()
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(TurnKeys::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(TurnKeys::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(TurnKeys::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(TurnKeys::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(TurnKeys::default())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TurnKeys::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys = TurnKeys::default();
                while let Some(CowStr(k)) = map.next_key::<CowStr>()? {
                    map.next_value::<IgnoredAny>()?;
                    match k.as_ref() {
                        "role" => keys.role = true,
                        "content" => keys.content = true,
                        "from" => keys.from = true,
                        "value" => keys.value = true,
                        _ => {}
                    }
                }
                Ok(keys)
            }
        }
        d.deserialize_any(V)
    }
}

/// The values of `keys` in a JSON object, each read as a `T` (the other values skipped over).
struct Fields<'k, T> {
    keys: &'k [String],
    value: PhantomData<T>,
}

impl<'k, T> Fields<'k, T> {
    fn new(keys: &'k [String]) -> Self {
        Fields {
            keys,
            value: PhantomData,
        }
    }

    /// The values of the keys in the JSON line `text`.
    fn of<'de>(self, text: &'de str) -> Result<Vec<Option<T>>, serde_json::Error>
    where
        T: de::Deserialize<'de>,
    {
        let mut de = serde_json::Deserializer::from_str(text);
        let values = self.deserialize(&mut de)?;
        de.end().map(|_| values)
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Fields<'_, T> {
    type Value = Vec<Option<T>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: de::Deserialize<'de>> Visitor<'de> for Fields<'_, T> {
    type Value = Vec<Option<T>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<Option<T>> = (0..self.keys.len()).map(|_| None).collect();
        while let Some(CowStr(k)) = map.next_key::<CowStr>()? {
            match self.keys.iter().position(|x| *x == k) {
                Some(i) => out[i] = Some(map.next_value::<T>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// The string values of `keys` in one JSON line, in the order of `keys`.
pub fn extract_fields<'a>(line: &'a [u8], keys: &[String]) -> Result<Vec<Cow<'a, str>>, LineError> {
    // SIMD validation: the line is mostly one long non-ASCII string, where std's check is slow.
    let text = simdutf8::basic::from_utf8(line).map_err(|_| {
        let valid = std::str::from_utf8(line)
            .err()
            .map_or(0, |e| e.valid_up_to());
        LineError::NotUtf8(line[valid])
    })?;
    let bad_json = |e: serde_json::Error| LineError::BadJson(json_error(text, &e));
    let values = match Fields::<MaybeStr>::new(keys).of(text) {
        // A number past a double in a field asked for (serde_json reads the numbers there, and
        // skips the others unread): the fields are read again as raw JSON, their numbers unread.
        Err(e) if e.to_string().starts_with("number out of range") => {
            let raws = Fields::<&RawValue>::new(keys).of(text).map_err(bad_json)?;
            refuse_what_a_full_parse_refuses(text)?;
            raws.into_iter()
                .map(|raw| raw.map(value_of_raw).transpose())
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad_json)?
        }
        values => {
            let values = values.map_err(bad_json)?;
            refuse_what_a_full_parse_refuses(text)?;
            values
        }
    };
    values
        .into_iter()
        .zip(keys)
        .map(|(v, k)| match v {
            Some(MaybeStr::Str(text)) => Ok(text),
            Some(MaybeStr::Other(kind)) => Err(LineError::NotString(k.clone(), kind)),
            None => Err(LineError::MissingKey(k.clone())),
        })
        .collect()
}

/// serde_json skips the fields it is not asked for without decoding their strings or counting their
/// depth: what a full parse (and the Python reader) refuses in the valid JSON line `text`.
fn refuse_what_a_full_parse_refuses(text: &str) -> Result<(), LineError> {
    if let Some(at) = unpaired_surrogate(text) {
        return Err(LineError::BadJson(unpaired_surrogate_said(text, at)));
    }
    if let Some(at) = too_deep(text) {
        return Err(LineError::BadJson(format!(
            "arrays and objects nested more than {MAX_DEPTH} deep at column {}",
            column(text, at)
        )));
    }
    Ok(())
}

/// serde_json's error `e` on the line `text`, said for a line of a file: the column in
/// characters (its "line 1" is no line of the file), and the causes it does not name.
fn json_error(text: &str, e: &serde_json::Error) -> String {
    let full = e.to_string();
    let what = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(w, _)| w);
    // The byte the error was met at (serde_json's 1-based column counts bytes).
    let mut at = e.column().saturating_sub(1).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let rest = &text[at..];
    if rest.starts_with('\u{feff}') {
        return bom_said(column(text, at));
    }
    if rest.starts_with("NaN") || rest.starts_with("Infinity") {
        // Python's json.dumps writes these unless told not to; a "-Infinity" is met at its "I".
        let (start, word) = if rest.starts_with('N') {
            (at, "NaN")
        } else if text[..at].ends_with('-') {
            (at - 1, "-Infinity")
        } else {
            (at, "Infinity")
        };
        return format!(
            "{word} at column {}: NaN and Infinity are not JSON (Python's json.dumps writes them \
             unless allow_nan=False); write null instead",
            column(text, start)
        );
    }
    if what.contains("surrogate") || what.contains("hex escape") {
        // serde_json stops at most two escapes (12 bytes) past the surrogate's.
        let end = at + rest.chars().next().map_or(0, char::len_utf8);
        let from = at.saturating_sub(12);
        if let Some(start) = text[..end]
            .match_indices("\\u")
            .map(|(i, _)| i)
            .filter(|&i| i >= from && is_surrogate_escape(&text[i..]))
            .last()
        {
            return unpaired_surrogate_said(text, start);
        }
    }
    format!("{what} at column {}", column(text, at))
}

/// A byte order mark met at `column` of a line: one opening a file is dropped (see `Batch`), so
/// this one is where files that each open with one were joined (`cat`). Python's reader says the same.
fn bom_said(column: usize) -> String {
    format!(
        "a byte order mark (U+FEFF) at column {column}, where only a file's first bytes may hold one: \
         were files written with one joined? remove them, e.g. sed -i 's/^\\xEF\\xBB\\xBF//' FILE"
    )
}

/// The 1-based column, in characters, of the byte `at` of the line `text`.
fn column(text: &str, at: usize) -> usize {
    text[..at].chars().count() + 1
}

/// The unpaired surrogate escape at the byte `at` of the line `text`, said.
fn unpaired_surrogate_said(text: &str, at: usize) -> String {
    format!(
        "unpaired UTF-16 surrogate escape {} at column {} (half of a pair, without its other half)",
        &text[at..at + 6],
        column(text, at)
    )
}

/// Where the valid JSON line `text` has a `\uD800`-`\uDFFF` escape that is not half of a pair
/// (a high half followed at once by a low half): the byte offset of the first such escape.
fn unpaired_surrogate(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    // Cheap test first: most lines have no surrogate escape at all.
    static UNICODE_ESCAPE: LazyLock<memmem::Finder> = LazyLock::new(|| memmem::Finder::new("\\u"));
    if !UNICODE_ESCAPE
        .find_iter(b)
        .any(|i| is_surrogate_escape(&text[i..]))
    {
        return None;
    }
    let mut high: Option<usize> = None; // a high half, waiting for its low half
    let mut from = 0;
    // In valid JSON every backslash opens an escape inside a string: `\uXXXX` or two bytes.
    while let Some(found) = memchr::memchr(b'\\', &b[from..]) {
        let at = from + found;
        let unit = (b.get(at + 1) == Some(&b'u'))
            .then(|| text.get(at + 2..at + 6))
            .flatten()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok());
        from = at + if unit.is_some() { 6 } else { 2 };
        if let Some(h) = high.take() {
            if at == h + 6 && matches!(unit, Some(0xDC00..=0xDFFF)) {
                continue;
            }
            return Some(h);
        }
        match unit {
            Some(0xD800..=0xDBFF) => high = Some(at),
            Some(0xDC00..=0xDFFF) => return Some(at),
            _ => {}
        }
    }
    high
}

/// The deepest nesting of arrays and objects a line may hold, its own object counted: serde_json's
/// own limit, and well within the depth Python's json module reads on every supported version.
pub const MAX_DEPTH: usize = 128;

/// Where the valid JSON line `text` nests arrays and objects deeper than [`MAX_DEPTH`]: the byte
/// offset of the bracket that opens the level past it.
fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    // Cheap test first: a line needs more brackets than the limit to pass it.
    memchr::memchr2_iter(b'[', b'{', b).nth(MAX_DEPTH)?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, &c) in b.iter().enumerate() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(at);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// True when `s` starts with a `\uD800`-`\uDFFF` escape.
fn is_surrogate_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 6
        && b[2].eq_ignore_ascii_case(&b'd')
        && matches!(b[3].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f')
        && b[4].is_ascii_hexdigit()
        && b[5].is_ascii_hexdigit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn extracts_keys_in_order() {
        let line = br#"{"id": 1, "text": "a\nb", "nested": {"text": 5}, "title": "T"}"#;
        let got = extract_fields(line, &keys(&["title", "text"])).unwrap();
        assert_eq!(got, ["T", "a\nb"]);
    }

    #[test]
    fn reports_bad_lines() {
        let k = keys(&["text"]);
        assert_eq!(
            extract_fields(b"\xff\xfe", &k),
            Err(LineError::NotUtf8(0xff))
        );
        assert!(matches!(
            extract_fields(b"{\"text\": ", &k),
            Err(LineError::BadJson(_))
        ));
        assert!(matches!(
            extract_fields(b"", &k),
            Err(LineError::BadJson(_))
        ));
        assert!(matches!(
            extract_fields(b"[1]", &k),
            Err(LineError::BadJson(_))
        ));
        assert!(matches!(
            extract_fields(b"{\"a\":1} x", &k),
            Err(LineError::BadJson(_))
        ));
        assert_eq!(
            extract_fields(b"{\"a\":1}", &k),
            Err(LineError::MissingKey("text".into()))
        );
        assert_eq!(
            extract_fields(b"{\"text\":null}", &k),
            Err(LineError::NotString("text".into(), NotText::Null))
        );
        assert_eq!(extract_fields(b"{\"text\":\"\"}\r", &k).unwrap(), [""]);
    }

    #[test]
    fn a_value_that_is_not_a_string_is_said_as_what_it_is() {
        let k = keys(&["messages"]);
        let said = |line: &str| extract_fields(line.as_bytes(), &k).unwrap_err().to_string();
        assert_eq!(said(r#"{"text": "x"}"#), r#"no string field "messages""#);
        for (value, what) in [
            ("null", "null"),
            ("true", "a bool"),
            ("-1.5e3", "a number"),
            (r#"{"role": "user", "content": "x"}"#, "an object"),
            ("[]", "a list"),
            (r#"["a", 1]"#, "a list"),
            (r#"[{"role": "user", "content": "x"}, 1]"#, "a list"),
            (r#"[{"role": "user"}]"#, "a list"),
        ] {
            let line = format!(r#"{{"messages": {value}, "id": 1}}"#);
            assert_eq!(
                said(&line),
                format!(r#"field "messages" is {what}, not a string"#)
            );
        }
        // A chat in a text field: the chat commands are named.
        let chat = r#"{"messages": [{"role": "user", "content": "Привет"}, {"role": "assistant",
            "content": [{"type": "text", "text": "x"}], "weight": 1}]}"#;
        assert_eq!(
            extract_fields(chat.replace('\n', " ").as_bytes(), &k),
            Err(LineError::NotString(
                "messages".into(),
                NotText::ChatMessages
            ))
        );
        assert_eq!(
            said(r#"{"messages": [{"role": "user", "content": "Привет"}]}"#),
            "field \"messages\" is a list of chat messages (role/content), not a string: chats are \
             encoded with vikhr sft prepare, not pre-tokenized as text; see docs/sft.md"
        );
        let sharegpt = r#"{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}"#;
        assert_eq!(
            extract_fields(sharegpt.as_bytes(), &keys(&["conversations"])),
            Err(LineError::NotString(
                "conversations".into(),
                NotText::ShareGptTurns
            ))
        );
        assert_eq!(not_text(r#""x""#), Ok(None));
        assert_eq!(
            not_text("[{\"from\": 1, \"value\": null}]"),
            Ok(Some(NotText::ShareGptTurns))
        );
        assert!(not_text("[1").is_err());
        assert!(not_text("\"x\" 1").is_err());
        for past_a_double in ["1e400", "-1e400", "[1e400]", &"9".repeat(5000)] {
            assert_eq!(
                not_text(past_a_double).map(|k| k.is_some()),
                Ok(true),
                "{past_a_double}"
            );
        }
        assert_eq!(not_text("[1e400]"), Ok(Some(NotText::List)));
    }

    #[test]
    fn a_list_of_strings_is_said_with_how_to_join_it() {
        // The field is the text kept as sentences or paragraphs: the fix is to join them, not to
        // choose another field.
        let said = |line: &str, key: &str| {
            extract_fields(line.as_bytes(), &keys(&[key]))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            said(r#"{"text": ["Первое.", "Второе\n", "x"], "id": 1}"#, "text"),
            "field \"text\" is a list of 3 strings, not one string: join them into one string per \
             document, e.g. jq -c '.text |= join(\"\\n\")' IN.jsonl > OUT.jsonl"
        );
        assert_eq!(
            said(r#"{"body text": ["a"]}"#, "body text"),
            "field \"body text\" is a list of 1 string, not one string: join them into one string \
             per document, e.g. jq -c '.[\"body text\"] |= join(\"\\n\")' IN.jsonl > OUT.jsonl"
        );
        // Read again past a number beyond a double elsewhere in the line, and from a value alone.
        assert_eq!(
            extract_fields(
                br#"{"text": ["a", "b"], "n": 1e400}"#,
                &keys(&["text", "n"])
            ),
            Err(LineError::NotString("text".into(), NotText::Strings(2)))
        );
        assert_eq!(not_text(r#"["a", "b"]"#), Ok(Some(NotText::Strings(2))));
        assert_eq!(not_text(r#"["a", 1e400]"#), Ok(Some(NotText::List)));
        assert!(NotText::Strings(2).says_its_fix() && !NotText::Strings(2).is_chat());
        assert!(!NotText::List.says_its_fix() && NotText::ChatMessages.says_its_fix());
    }

    #[test]
    fn bad_lines_are_said_as_lines_of_a_file_with_their_cause() {
        let k = keys(&["text"]);
        let said = |line: &[u8]| extract_fields(line, &k).unwrap_err().to_string();
        // The column counts characters; serde_json's "line 1" is no line of the file.
        assert_eq!(
            said("{\"text\": \"ёж\", \"x\": oops}".as_bytes()),
            "not valid JSON (expected value at column 21)"
        );
        let nan = "NaN and Infinity are not JSON (Python's json.dumps writes them unless \
                   allow_nan=False); write null instead";
        for (line, word, column) in [
            ("{\"text\":\"x\",\"score\":NaN}", "NaN", 21),
            ("{\"x\": [1, Infinity], \"text\": \"a\"}", "Infinity", 11),
            ("{\"x\": -Infinity, \"text\": \"a\"}", "-Infinity", 7),
        ] {
            let want = format!("not valid JSON ({word} at column {column}: {nan})");
            assert_eq!(said(line.as_bytes()), want);
        }
        let unpaired = "(half of a pair, without its other half)";
        for (line, escape, column) in [
            (r#"{"text": "a\ud83d b"}"#, r"\ud83d", 12),
            (r#"{"text": "\ud800"}"#, r"\ud800", 11),
            (r#"{"text": "\uDC00"}"#, r"\uDC00", 11),
            (r#"{"text": "\ud83d\u0041"}"#, r"\ud83d", 11),
        ] {
            let want = format!(
                "not valid JSON (unpaired UTF-16 surrogate escape {escape} at column {column} \
                 {unpaired})"
            );
            assert_eq!(said(line.as_bytes()), want);
        }
        // "Привет" in cp1251.
        assert_eq!(
            said(b"{\"text\": \"\xcf\xf0\xe8\xe2\xe5\xf2\"}"),
            "not UTF-8 (byte 0xcf); re-encode it as UTF-8, e.g. iconv -f cp1251 -t utf-8"
        );
    }

    #[test]
    fn what_a_full_parse_refuses_is_refused_in_the_fields_not_asked_for() {
        let k = keys(&["text"]);
        let said = |line: &str| -> Result<Vec<String>, String> {
            let texts = extract_fields(line.as_bytes(), &k).map_err(|e| e.to_string())?;
            Ok(texts.into_iter().map(|t| t.into_owned()).collect())
        };
        let unpaired = |escape: &str, column: usize| {
            Err(format!(
                "not valid JSON (unpaired UTF-16 surrogate escape {escape} at column {column} \
                 (half of a pair, without its other half))"
            ))
        };
        // A lone half in another field, deep in one, or in a value a later key replaces.
        for (line, escape, column) in [
            (r#"{"x": "\ud83d", "text": "a"}"#, r"\ud83d", 8),
            (r#"{"text": "a", "m": {"k": ["\uDFFF"]}}"#, r"\uDFFF", 28),
            (r#"{"x": "\ude00\ud83d", "text": "a"}"#, r"\ude00", 8),
            (r#"{"x": "\ud83d\u0041", "text": "a"}"#, r"\ud83d", 8),
            (r#"{"text": "\ud83d", "text": "b"}"#, r"\ud83d", 11),
        ] {
            assert_eq!(said(line), unpaired(escape, column), "{line}");
        }
        // A pair, and an escaped backslash before "ud83d" (no escape), are text.
        assert_eq!(
            said(r#"{"x": "\ud83d\ude00", "text": "ж\\ud83d"}"#).unwrap(),
            [r"ж\ud83d"]
        );
        // Nesting: MAX_DEPTH levels, the line's object counted, and no further.
        let nested = |levels: usize| {
            format!(
                r#"{{"text": "[{{", "n": {}{}}}"#,
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert_eq!(said(&nested(MAX_DEPTH)).unwrap(), ["[{"]);
        assert_eq!(
            said(&nested(MAX_DEPTH + 1)),
            Err(format!(
                "not valid JSON (arrays and objects nested more than {MAX_DEPTH} deep at column {})",
                21 + MAX_DEPTH - 1
            ))
        );
        assert!(said(&nested(100_000)).is_err());
    }

    #[test]
    fn a_number_past_a_double_is_a_number_where_text_is_wanted() {
        // Python's json reads 1e400 (and an integer past int()'s digit limit) as inf: a number.
        let k = keys(&["text"]);
        let got = |line: &str, k: &[String]| {
            extract_fields(line.as_bytes(), k)
                .map(|texts| texts.into_iter().map(Cow::into_owned).collect::<Vec<_>>())
        };
        let not_string = |key: &str, kind| Err(LineError::NotString(key.into(), kind));
        let digits = "9".repeat(5000);
        for (value, kind) in [
            ("1e400", NotText::Number),
            ("-1e400", NotText::Number),
            (digits.as_str(), NotText::Number),
            ("[1e400, {\"a\": -1e999}]", NotText::List),
            (
                "[{\"role\": \"user\", \"content\": \"x\"}, 1e400]",
                NotText::List,
            ),
        ] {
            let line = format!(r#"{{"text": {value}, "id": 1}}"#);
            assert_eq!(got(&line, &k), not_string("text", kind), "{value}");
        }
        assert_eq!(
            extract_fields(b"{\"text\": 1e400}", &k)
                .unwrap_err()
                .to_string(),
            r#"field "text" is a number, not a string"#
        );
        // Read again past such a number, the other fields asked for are what they are.
        let chat = r#"[{"role": "user", "content": "x", "n": 1e400}]"#;
        let line = format!(r#"{{"text": {chat}, "n": 1e400}}"#);
        let (text_n, n_text) = (keys(&["text", "n"]), keys(&["n", "text"]));
        assert_eq!(
            got(&line, &text_n),
            not_string("text", NotText::ChatMessages)
        );
        assert_eq!(got(&line, &n_text), not_string("n", NotText::Number));
        let replaced = r#"{"text": 1e400, "id": 1e400, "text": "ж\u0041\n"}"#;
        assert_eq!(got(replaced, &k).unwrap(), ["жA\n"]);
        assert_eq!(
            got(r#"{"id": 1e400, "text": "a"}"#, &keys(&["text", "id"])),
            not_string("id", NotText::Number)
        );
        // Past a double elsewhere: the record is read, as Python reads it.
        let elsewhere = format!(r#"{{"n": 1e400, "m": [-1e-400, {digits}], "text": "a"}}"#);
        assert_eq!(got(&elsewhere, &k).unwrap(), ["a"]);
        // What else is wrong in the line is still said.
        let said = |line: &str| got(line, &k).unwrap_err().to_string();
        assert_eq!(
            said(r#"{"text": 1e400, "x": oops}"#),
            "not valid JSON (expected value at column 22)"
        );
        assert_eq!(
            said(r#"{"text": 1e400, "x": "\ud800"}"#),
            "not valid JSON (unpaired UTF-16 surrogate escape \\ud800 at column 23 (half of a \
             pair, without its other half))"
        );
        let deep = format!(
            r#"{{"text": 1e400, "n": {}{}}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(said(&deep).contains(&format!("nested more than {MAX_DEPTH} deep")));
    }

    #[test]
    fn a_byte_order_mark_opening_the_file_is_not_part_of_line_1() {
        let data = b"\xef\xbb\xbf{\"text\":\"a\"}\n\xef\xbb\xbf{\"text\":\"b\"}\n";
        let got = batches(data, 64);
        let lines: Vec<&[u8]> = got[0].lines().collect();
        assert_eq!(lines[0], b"{\"text\":\"a\"}");
        assert_eq!(lines[1], b"\xef\xbb\xbf{\"text\":\"b\"}"); // only the file's first bytes
        assert_eq!(extract_fields(lines[0], &keys(&["text"])).unwrap(), ["a"]);
        // One opening a later line (files joined with cat) is said as what it is.
        let said = |line: &[u8]| {
            extract_fields(line, &keys(&["text"]))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(said(lines[1]), format!("not valid JSON ({})", bom_said(1)));
        assert_eq!(
            said("{\"x\": 1,\u{feff} \"text\": \"ё\"}".as_bytes()),
            format!("not valid JSON ({})", bom_said(9))
        );
        assert_eq!(batches(b"\xef\xbb\xbf", 64)[0].line(0), b"");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn gunzip(data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzMembers::new(Cursor::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_members_and_zero_padding_are_read_as_gzip_reads_them() {
        let (a, b) = (gzip(b"{\"text\":\"a\"}\n"), gzip(b"{\"text\":\"b\"}\n"));
        let both = [a.clone(), b.clone()].concat();
        assert_eq!(
            gunzip(both.clone()).unwrap(),
            b"{\"text\":\"a\"}\n{\"text\":\"b\"}\n"
        );
        let padded = [a.clone(), vec![0; 3000], b.clone(), vec![0; 512]].concat();
        assert_eq!(gunzip(padded).unwrap(), gunzip(both).unwrap());
        assert_eq!(gunzip(Vec::new()).unwrap(), b"");
        // Anything but zeros after a member is a damaged member, as is a cut one.
        assert!(gunzip([a.clone(), b"junk".to_vec()].concat()).is_err());
        assert!(gunzip(a[..a.len() - 4].to_vec()).is_err());
    }

    fn batches(data: &[u8], batch: usize) -> Vec<LineBatch> {
        let mut r = LineBatcher::new(Box::new(Cursor::new(data.to_vec())), 0, batch);
        let mut out = Vec::new();
        while let Some(b) = r.next_batch().unwrap() {
            out.push(b);
        }
        out
    }

    proptest! {
        /// Batching never loses, splits or reorders lines, and numbers them from 1.
        #[test]
        fn batcher_preserves_lines(lines in proptest::collection::vec("[a-z{}\":, ]{0,20}", 0..40), trailing in any::<bool>(), batch in 1usize..64) {
            let mut data = lines.join("\n").into_bytes();
            if trailing && !lines.is_empty() { data.push(b'\n'); }
            let got = batches(&data, batch);
            let mut all: Vec<Vec<u8>> = Vec::new();
            let mut next = 1u64;
            for b in &got {
                prop_assert_eq!(b.first_line, next);
                next += b.len() as u64;
                all.extend(b.lines().map(|l| l.to_vec()));
            }
            let want: Vec<Vec<u8>> = if data.is_empty() { vec![] } else {
                let s = data.strip_suffix(b"\n").unwrap_or(&data);
                s.split(|&c| c == b'\n').map(|l| l.to_vec()).collect()
            };
            prop_assert_eq!(all, want);
        }

        /// Saying why a line is not JSON never panics, whatever the line.
        #[test]
        fn json_errors_are_said_for_any_line(line in r#"[{}\[\]":, \\udDcC8aF0-9ëжNaIinfty-]{0,40}"#) {
            let _ = extract_fields(line.as_bytes(), &keys(&["text"]));
        }

        /// The field extractor never panics and agrees with a full JSON parse.
        #[test]
        fn extractor_agrees_with_serde_json(line in proptest::collection::vec(any::<u8>(), 0..80), text in "\\PC{0,30}") {
            let k = keys(&["text"]);
            let _ = extract_fields(&line, &k);
            let obj = serde_json::json!({"x": [1, {"text": 2}], "text": text}).to_string();
            let got = extract_fields(obj.as_bytes(), &k).unwrap();
            prop_assert_eq!(got[0].as_ref(), text.as_str());
        }
    }
}
