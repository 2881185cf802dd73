//! megatron-core's memory-mapped indexed dataset (`MMIDIDX` version 1): a `.bin` of token ids and
//! an `.idx` laid out exactly as `IndexedDatasetBuilder.finalize` writes it:
//!
//! ```text
//! b"MMIDIDX\x00\x00" | u64 version = 1 | u8 dtype code | u64 sequence_count | u64 document_count
//! | i32 sequence_lengths[sequence_count] | i64 sequence_pointers[sequence_count] (byte offsets)
//! | i64 document_indices[document_count] (starts with 0) | i8 modes[sequence_count] (multimodal only)
//! ```
//!
//! The writer streams the `.bin` and spills the per-sequence/per-document arrays to scratch
//! files, so memory stays bounded however large the corpus. Outputs are written under
//! `*.partial` names and renamed only once complete: an interrupted run leaves nothing that loads,
//! and the datasets of one run (one per key) are renamed only once all are complete
//! ([`finish_all`]).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const INDEX_HEADER: &[u8; 9] = b"MMIDIDX\x00\x00";
const HEADER_LEN: u64 = 9 + 8 + 1 + 8 + 8;

/// Token dtype of a dataset (megatron-core's `DType` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    U8,
    I8,
    I16,
    I32,
    I64,
    F64,
    F32,
    U16,
}

impl DType {
    pub fn code(self) -> u8 {
        match self {
            DType::U8 => 1,
            DType::I8 => 2,
            DType::I16 => 3,
            DType::I32 => 4,
            DType::I64 => 5,
            DType::F64 => 6,
            DType::F32 => 7,
            DType::U16 => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => DType::U8,
            2 => DType::I8,
            3 => DType::I16,
            4 => DType::I32,
            5 => DType::I64,
            6 => DType::F64,
            7 => DType::F32,
            8 => DType::U16,
            _ => return None,
        })
    }

    pub fn size(self) -> u64 {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::U16 => "uint16",
        }
    }

    /// `DType.optimal_dtype(vocab_size)`: uint16 below 65500 ids, else int32.
    pub fn optimal(vocab_size: usize) -> Self {
        if vocab_size < 65500 {
            DType::U16
        } else {
            DType::I32
        }
    }
}

/// The vocabulary size of `distinct` tokens with the ids `ids`: the number of tokens (added ones
/// included, as Megatron counts them), or the largest id + 1 when the ids have gaps, which is
/// what a dataset's dtype must hold.
pub(crate) fn vocab_size(distinct: usize, ids: impl Iterator<Item = u32>) -> usize {
    let largest = ids.max().map_or(0, |m| m as usize + 1);
    distinct.max(largest)
}

/// A token id that the dataset's dtype cannot hold (inside the `io::Error` of `add_document`).
#[derive(Debug, thiserror::Error)]
#[error("token id {id} does not fit {}", dtype.name())]
pub struct IdDoesNotFit {
    pub id: u32,
    pub dtype: DType,
}

/// Append `tokens` to `out` as little-endian values of `dtype` (uint8, uint16 or int32).
fn encode_tokens(dtype: DType, tokens: &[u32], out: &mut Vec<u8>) -> io::Result<()> {
    let max = match dtype {
        DType::U8 => u32::from(u8::MAX),
        DType::U16 => u32::from(u16::MAX),
        DType::I32 => i32::MAX as u32,
        d => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("writing token ids as {} is not supported", d.name()),
            ))
        }
    };
    if let Some(&id) = tokens.iter().find(|&&t| t > max) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            IdDoesNotFit { id, dtype },
        ));
    }
    out.reserve(tokens.len() * dtype.size() as usize);
    match dtype {
        DType::U8 => out.extend(tokens.iter().map(|&t| t as u8)),
        DType::U16 => {
            for &t in tokens {
                out.extend_from_slice(&(t as u16).to_le_bytes());
            }
        }
        _ => {
            for &t in tokens {
                out.extend_from_slice(&(t as i32).to_le_bytes());
            }
        }
    }
    Ok(())
}

/// The token ids stored in `bytes` (little-endian values of `dtype`: uint8, uint16 or int32).
fn decode_tokens(dtype: DType, bytes: &[u8], out: &mut Vec<u32>) -> Result<(), String> {
    match dtype {
        DType::U8 => out.extend(bytes.iter().map(|&b| u32::from(b))),
        DType::U16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
        ),
        DType::I32 => {
            for c in bytes.chunks_exact(4) {
                let v = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                out.push(u32::try_from(v).map_err(|_| format!("negative token id {v}"))?);
            }
        }
        d => return Err(format!("token ids stored as {} cannot be read", d.name())),
    }
    Ok(())
}

pub fn bin_path(prefix: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}.bin"))
}

pub fn idx_path(prefix: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}.idx"))
}

/// The scratch files of a writer, as suffixes of the dataset prefix.
pub const SCRATCH_SUFFIXES: [&str; 4] = [
    ".bin.tmp.partial",
    ".idx.tmp.partial",
    ".idx.lengths.partial",
    ".idx.documents.partial",
];

fn partial(prefix: &str, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}{suffix}"))
}

fn ctx(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Streaming writer of one `{prefix}.bin/.idx` pair.
pub struct IndexedWriter {
    prefix: String,
    dtype: DType,
    bin: BufWriter<File>,
    lengths: BufWriter<File>,
    docs: BufWriter<File>,
    tmp_bin: PathBuf,
    tmp_lengths: PathBuf,
    tmp_docs: PathBuf,
    tmp_idx: PathBuf,
    sequences: u64,
    documents: u64,
    tokens: u64,
    finished: bool,
    scratch: Vec<u8>,
}

impl IndexedWriter {
    /// A writer of `{prefix}.bin/.idx`. The scratch files a killed writer of the same dataset
    /// left are taken over: truncated here, or (the `.idx` one) written over by `finish` and
    /// removed on drop. The caller makes sure no other writer of the dataset runs (a lock).
    pub fn create(prefix: &str, dtype: DType) -> io::Result<Self> {
        let bin = bin_path(prefix);
        if let Some(dir) = bin.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| ctx(e, dir))?;
        }
        let [tmp_bin, tmp_idx, tmp_lengths, tmp_docs] =
            SCRATCH_SUFFIXES.map(|s| partial(prefix, s));
        let open = |p: &Path| File::create(p).map(BufWriter::new).map_err(|e| ctx(e, p));
        let mut w = IndexedWriter {
            prefix: prefix.to_string(),
            dtype,
            bin: BufWriter::with_capacity(
                1 << 20,
                File::create(&tmp_bin).map_err(|e| ctx(e, &tmp_bin))?,
            ),
            lengths: open(&tmp_lengths)?,
            docs: open(&tmp_docs)?,
            tmp_bin,
            tmp_lengths,
            tmp_docs,
            tmp_idx,
            sequences: 0,
            documents: 1,
            tokens: 0,
            finished: false,
            scratch: Vec::new(),
        };
        w.docs.write_all(&0i64.to_le_bytes())?;
        Ok(w)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// `IndexedDatasetBuilder.add_document(tokens, lengths)`: the tokens of one document, made of
    /// sequences of the given lengths (an empty `lengths` adds a document without sequences).
    pub fn add_document(&mut self, tokens: &[u32], lengths: &[u64]) -> io::Result<()> {
        debug_assert_eq!(lengths.iter().sum::<u64>(), tokens.len() as u64);
        self.scratch.clear();
        encode_tokens(self.dtype, tokens, &mut self.scratch)?;
        self.bin
            .write_all(&self.scratch)
            .map_err(|e| ctx(e, &self.tmp_bin))?;
        for &l in lengths {
            let l = i32::try_from(l).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a sequence longer than 2^31 tokens",
                )
            })?;
            self.lengths
                .write_all(&l.to_le_bytes())
                .map_err(|e| ctx(e, &self.tmp_lengths))?;
        }
        self.sequences += lengths.len() as u64;
        self.documents += 1;
        self.tokens += tokens.len() as u64;
        self.docs
            .write_all(&(self.sequences as i64).to_le_bytes())
            .map_err(|e| ctx(e, &self.tmp_docs))?;
        Ok(())
    }

    /// Append a whole existing dataset (megatron-core's `add_index`): its `.bin` bytes verbatim,
    /// its sequence lengths, and its document boundaries shifted by the sequences already written.
    pub fn add_index(&mut self, prefix: &str) -> io::Result<()> {
        self.add_index_unless(prefix, &AtomicBool::new(false))
    }

    /// `add_index`, stopping with [`io::ErrorKind::Interrupted`] soon after `cancel` is set (the
    /// `.bin` is copied in pieces, so a large dataset does not hold a Ctrl-C until it is copied).
    /// An error reading the input is one line naming its `.idx` or `.bin`, with the fix.
    pub fn add_index_unless(&mut self, prefix: &str, cancel: &AtomicBool) -> io::Result<()> {
        // The `.idx` is read once: what is copied is what was checked.
        let (info, data) = load_index(prefix).map_err(|e| input_error(e, prefix))?;
        if info.dtype != self.dtype {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{prefix}: dtype {} differs from {}",
                    info.dtype.name(),
                    self.dtype.name()
                ),
            ));
        }
        if info.multimodal {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{prefix}: multimodal datasets cannot be merged"),
            ));
        }
        let lengths_at = HEADER_LEN as usize;
        let lengths = &data[lengths_at..lengths_at + 4 * info.sequence_count as usize];
        self.lengths
            .write_all(lengths)
            .map_err(|e| ctx(e, &self.tmp_lengths))?;
        let docs_at = info.document_indices_offset as usize;
        let docs = &data[docs_at..docs_at + 8 * info.document_count as usize];
        for c in docs.chunks_exact(8).skip(1) {
            let v = i64::from_le_bytes(c.try_into().unwrap()) + self.sequences as i64;
            self.docs
                .write_all(&v.to_le_bytes())
                .map_err(|e| ctx(e, &self.tmp_docs))?;
        }
        let bin = bin_path(prefix);
        let read_err = |e: io::Error| input_error(format!("{}: {e}", bin.display()), prefix);
        // Exactly the bytes the `.idx` describes: a `.bin` cut or grown since it was checked
        // would give a merged dataset whose `.bin` disagrees with its `.idx`.
        let mut f = File::open(&bin).map_err(read_err)?.take(info.bin_bytes);
        let mut piece = vec![0u8; 8 << 20];
        let mut copied = 0u64;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            let n = f.read(&mut piece).map_err(read_err)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            self.bin
                .write_all(&piece[..n])
                .map_err(|e| ctx(e, &self.tmp_bin))?;
        }
        if copied != info.bin_bytes {
            let what = format!(
                "{}: ended after {copied} of the {} bytes its .idx describes (it changed during the \
                 merge)",
                bin.display(),
                info.bin_bytes
            );
            return Err(input_error(what, prefix));
        }
        self.sequences += info.sequence_count;
        self.documents += info.document_count - 1;
        self.tokens += info.token_count;
        Ok(())
    }

    /// Write the `.idx`, then move both files to their final names (see [`finish_all`]).
    pub fn finish(self) -> io::Result<()> {
        finish_all(vec![self])
    }

    /// Write the `.idx` under its scratch name and sync both files to disk; nothing at the final
    /// names changes.
    fn prepare(&mut self) -> io::Result<()> {
        self.bin.flush().map_err(|e| ctx(e, &self.tmp_bin))?;
        self.lengths
            .flush()
            .map_err(|e| ctx(e, &self.tmp_lengths))?;
        self.docs.flush().map_err(|e| ctx(e, &self.tmp_docs))?;
        self.write_index()?;
        self.bin
            .get_ref()
            .sync_all()
            .map_err(|e| ctx(e, &self.tmp_bin))
    }

    /// The `.idx`, from the header and the spilled arrays.
    fn write_index(&self) -> io::Result<()> {
        let open = |p: &Path| File::open(p).map_err(|e| ctx(e, p));
        let f = File::create(&self.tmp_idx).map_err(|e| ctx(e, &self.tmp_idx))?;
        let mut idx = BufWriter::with_capacity(1 << 20, Named(f, &self.tmp_idx));
        idx.write_all(INDEX_HEADER)?;
        idx.write_all(&1u64.to_le_bytes())?;
        idx.write_all(&[self.dtype.code()])?;
        idx.write_all(&self.sequences.to_le_bytes())?;
        idx.write_all(&self.documents.to_le_bytes())?;
        io::copy(
            &mut Named(open(&self.tmp_lengths)?, &self.tmp_lengths),
            &mut idx,
        )?;
        let mut lengths = BufReader::new(open(&self.tmp_lengths)?);
        let mut pointer = 0i64;
        let mut buf = [0u8; 4];
        for _ in 0..self.sequences {
            lengths
                .read_exact(&mut buf)
                .map_err(|e| ctx(e, &self.tmp_lengths))?;
            idx.write_all(&pointer.to_le_bytes())?;
            pointer += i64::from(i32::from_le_bytes(buf)) * self.dtype.size() as i64;
        }
        io::copy(&mut Named(open(&self.tmp_docs)?, &self.tmp_docs), &mut idx)?;
        let Named(f, _) = idx.into_inner().map_err(|e| e.into_error())?;
        f.sync_all().map_err(|e| ctx(e, &self.tmp_idx))
    }
}

/// A file whose read and write errors name its path (for `io::copy`, whose error may come from
/// either side).
struct Named<'a>(File, &'a Path);

impl Read for Named<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| ctx(e, self.1))
    }
}

impl Write for Named<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(|e| ctx(e, self.1))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(|e| ctx(e, self.1))
    }
}

/// Finish writers whose datasets make one output (the keys of one preprocess run): every
/// `.bin` and `.idx` is written and synced before any final name changes, so an error then (a
/// full disk) leaves every old dataset as it was; then every old `.idx` goes before the first new
/// file takes its final name, so an error in the renames never leaves an old dataset that loads
/// beside a new one. I/O errors name their file.
pub fn finish_all(mut writers: Vec<IndexedWriter>) -> io::Result<()> {
    for w in &mut writers {
        w.prepare()?;
    }
    for w in &writers {
        let idx = idx_path(&w.prefix);
        match fs::remove_file(&idx) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx(e, &idx)),
        }
    }
    for w in &writers {
        let bin = bin_path(&w.prefix);
        fs::rename(&w.tmp_bin, &bin).map_err(|e| ctx(e, &bin))?;
    }
    for w in &mut writers {
        let idx = idx_path(&w.prefix);
        fs::rename(&w.tmp_idx, &idx).map_err(|e| ctx(e, &idx))?;
        w.finished = true;
        let _ = fs::remove_file(&w.tmp_lengths);
        let _ = fs::remove_file(&w.tmp_docs);
    }
    // The renames live in the folders' entries: synced, a power loss after "done" cannot undo them.
    let mut dirs: Vec<PathBuf> = writers.iter().map(|w| folder_of(&w.prefix)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        sync_dir(&dir)?;
    }
    Ok(())
}

/// The folder that holds `{prefix}.bin/.idx`.
fn folder_of(prefix: &str) -> PathBuf {
    match bin_path(prefix).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Sync `dir`'s entries (renames, removals) to disk. A file system that cannot sync a folder
/// (EINVAL, ENOTSUP) is left as it is; elsewhere than Unix this does nothing.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            if !matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) {
                return Err(ctx(e, dir));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl Drop for IndexedWriter {
    fn drop(&mut self) {
        if !self.finished {
            for p in [
                &self.tmp_bin,
                &self.tmp_idx,
                &self.tmp_lengths,
                &self.tmp_docs,
            ] {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// What an `.idx` says, after checking it against itself and against the `.bin` size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexInfo {
    pub dtype: DType,
    pub sequence_count: u64,
    pub document_count: u64,
    pub token_count: u64,
    pub multimodal: bool,
    pub bin_bytes: u64,
    pub document_indices_offset: u64,
    /// Number of documents without any sequence (empty documents).
    pub empty_documents: u64,
}

/// Parse and validate an index given as bytes (`bin_bytes` = size of the `.bin`).
pub fn parse_index(data: &[u8], bin_bytes: u64) -> Result<IndexInfo, String> {
    let len = data.len() as u64;
    if len < HEADER_LEN {
        return Err(format!(
            "index is {len} bytes, shorter than the {HEADER_LEN}-byte header"
        ));
    }
    if &data[..9] != INDEX_HEADER {
        return Err("not an MMIDIDX index (bad magic)".into());
    }
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let version = u64_at(9);
    if version != 1 {
        return Err(format!("index version {version}, expected 1"));
    }
    let dtype =
        DType::from_code(data[17]).ok_or_else(|| format!("unknown dtype code {}", data[17]))?;
    let (n, d) = (u64_at(18), u64_at(26));
    let arrays = n
        .checked_mul(12)
        .and_then(|x| d.checked_mul(8).and_then(|y| x.checked_add(y)))
        .and_then(|x| x.checked_add(HEADER_LEN))
        .ok_or("sequence/document counts overflow")?;
    let multimodal = if len == arrays {
        false
    } else if Some(len) == arrays.checked_add(n) {
        true
    } else {
        return Err(format!(
            "index is {len} bytes but {n} sequences and {d} documents need {arrays} bytes"
        ));
    };
    if d == 0 {
        return Err("document_indices is empty (it must start with 0)".into());
    }
    let lengths_at = HEADER_LEN as usize;
    let pointers_at = lengths_at + 4 * n as usize;
    let docs_at = pointers_at + 8 * n as usize;
    let mut expected_pointer = 0i64;
    let mut tokens = 0u64;
    for i in 0..n as usize {
        let l = i32::from_le_bytes(
            data[lengths_at + 4 * i..lengths_at + 4 * i + 4]
                .try_into()
                .unwrap(),
        );
        if l < 0 {
            return Err(format!("sequence {i} has negative length {l}"));
        }
        let p = i64::from_le_bytes(
            data[pointers_at + 8 * i..pointers_at + 8 * i + 8]
                .try_into()
                .unwrap(),
        );
        if p != expected_pointer {
            return Err(format!(
                "sequence {i} points at byte {p}, expected {expected_pointer}"
            ));
        }
        tokens += l as u64;
        expected_pointer += i64::from(l) * dtype.size() as i64;
    }
    let mut prev = -1i64;
    let mut empty = 0u64;
    for j in 0..d as usize {
        let v = i64::from_le_bytes(
            data[docs_at + 8 * j..docs_at + 8 * j + 8]
                .try_into()
                .unwrap(),
        );
        if j == 0 && v != 0 {
            return Err(format!("document_indices starts with {v}, expected 0"));
        }
        if v < prev || v as u64 > n {
            return Err(format!(
                "document_indices[{j}] = {v} is out of order or past {n} sequences"
            ));
        }
        if j > 0 && v == prev {
            empty += 1;
        }
        prev = v;
    }
    if prev as u64 != n {
        return Err(format!(
            "document_indices ends at {prev}, but there are {n} sequences"
        ));
    }
    let need = tokens * dtype.size();
    if bin_bytes != need {
        return Err(format!(
            ".bin is {bin_bytes} bytes but the index describes {tokens} tokens x {} bytes = {need}",
            dtype.size()
        ));
    }
    Ok(IndexInfo {
        dtype,
        sequence_count: n,
        document_count: d,
        token_count: tokens,
        multimodal,
        bin_bytes,
        document_indices_offset: docs_at as u64,
        empty_documents: empty,
    })
}

/// Read and validate `{prefix}.idx` against `{prefix}.bin`.
pub fn read_index(prefix: &str) -> Result<IndexInfo, String> {
    load_index(prefix).map(|(info, _)| info)
}

/// [`read_index`], and the bytes of the `.idx` it validated.
fn load_index(prefix: &str) -> Result<(IndexInfo, Vec<u8>), String> {
    let (idx, bin) = (idx_path(prefix), bin_path(prefix));
    let data = fs::read(&idx).map_err(|e| format!("{}: {e}", idx.display()))?;
    let bin_bytes = fs::metadata(&bin)
        .map_err(|e| format!("{}: {e}", bin.display()))?
        .len();
    let info = parse_index(&data, bin_bytes).map_err(|e| format!("{}: {e}", idx.display()))?;
    Ok((info, data))
}

/// `what` went wrong reading the merge input `prefix` (`what` names its file), with the fix.
fn input_error(what: String, prefix: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{what} (an input of the merge: copy or write {prefix} again, or leave it out of the \
             merge)"
        ),
    )
}

/// A validated dataset opened for reading documents and scanning its tokens.
pub struct IndexReader {
    info: IndexInfo,
    /// Token offset of each sequence in the `.bin`, plus the total at the end.
    offsets: Vec<u64>,
    /// `document_indices`: the first sequence of each document, plus the sequence count.
    documents: Vec<u64>,
    bin: File,
    bin_path: PathBuf,
}

impl IndexReader {
    /// Read and validate `{prefix}.idx` against `{prefix}.bin` (see [`read_index`]).
    pub fn open(prefix: &str) -> Result<Self, String> {
        let (idx, bin) = (idx_path(prefix), bin_path(prefix));
        let data = fs::read(&idx).map_err(|e| format!("{}: {e}", idx.display()))?;
        let file = File::open(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
        let bin_bytes = file
            .metadata()
            .map_err(|e| format!("{}: {e}", bin.display()))?
            .len();
        let info = parse_index(&data, bin_bytes).map_err(|e| format!("{}: {e}", idx.display()))?;
        let n = info.sequence_count as usize;
        let mut offsets = Vec::with_capacity(n + 1);
        let mut total = 0u64;
        offsets.push(0);
        for c in data[HEADER_LEN as usize..][..4 * n].chunks_exact(4) {
            total += u64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32);
            offsets.push(total);
        }
        let documents = data[info.document_indices_offset as usize..]
            .chunks_exact(8)
            .take(info.document_count as usize)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u64)
            .collect();
        Ok(IndexReader {
            info,
            offsets,
            documents,
            bin: file,
            bin_path: bin,
        })
    }

    pub fn info(&self) -> &IndexInfo {
        &self.info
    }

    /// Number of documents (empty ones included).
    pub fn document_count(&self) -> usize {
        self.documents.len() - 1
    }

    /// The tokens of document `i` (all its sequences, back to back).
    pub fn document(&self, i: usize) -> Result<Vec<u32>, String> {
        if i >= self.document_count() {
            return Err(format!(
                "document {i} is past the dataset's {} documents",
                self.document_count()
            ));
        }
        let first = self.offsets[self.documents[i] as usize];
        let end = self.offsets[self.documents[i + 1] as usize];
        self.tokens(first, end - first)
    }

    /// `count` tokens from token offset `first`.
    pub fn tokens(&self, first: u64, count: u64) -> Result<Vec<u32>, String> {
        let size = self.info.dtype.size();
        let mut bytes = vec![0u8; (count * size) as usize];
        self.bin
            .read_exact_at(&mut bytes, first * size)
            .map_err(|e| format!("{}: {e}", self.bin_path.display()))?;
        let mut out = Vec::with_capacity(count as usize);
        decode_tokens(self.info.dtype, &bytes, &mut out)?;
        Ok(out)
    }

    /// The largest token id in the `.bin` (None when it holds no token), read in large blocks.
    pub fn max_token(&self) -> Result<Option<u32>, String> {
        const BLOCK: u64 = 1 << 22;
        let size = self.info.dtype.size();
        let total = self.info.token_count;
        let mut max: Option<u32> = None;
        let mut first = 0;
        while first < total {
            let count = (total - first).min(BLOCK / size);
            max = max.max(self.tokens(first, count)?.into_iter().max());
            first += count;
        }
        Ok(max)
    }
}

/// Concatenate datasets into one (Megatron's `merge_datasets.py`, byte for byte).
/// Stops with [`io::ErrorKind::Interrupted`], leaving no output, soon after `cancel` is set.
pub fn merge(
    prefixes: &[String],
    output_prefix: &str,
    cancel: &AtomicBool,
) -> io::Result<IndexInfo> {
    let first = prefixes
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "nothing to merge"))?;
    let info = read_index(first).map_err(|e| input_error(e, first))?;
    let mut w = IndexedWriter::create(output_prefix, info.dtype)?;
    for p in prefixes {
        w.add_index_unless(p, cancel)?;
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
    }
    w.finish()?;
    read_index(output_prefix).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vikhr-mmidx-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(prefix: &str, docs: &[Vec<u32>], dtype: DType) {
        let mut w = IndexedWriter::create(prefix, dtype).unwrap();
        for d in docs {
            let lens: Vec<u64> = if d.is_empty() {
                vec![]
            } else {
                vec![d.len() as u64]
            };
            w.add_document(d, &lens).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn roundtrip_and_merge() {
        let dir = tmpdir("rt");
        let a = dir.join("a").to_string_lossy().into_owned();
        let b = dir.join("b").to_string_lossy().into_owned();
        write(&a, &[vec![1, 2, 3], vec![], vec![7]], DType::U16);
        write(&b, &[vec![9, 9]], DType::U16);
        let ia = read_index(&a).unwrap();
        assert_eq!(
            (
                ia.sequence_count,
                ia.document_count,
                ia.token_count,
                ia.empty_documents
            ),
            (2, 4, 4, 1)
        );
        let m = dir.join("m").to_string_lossy().into_owned();
        let im = merge(&[a.clone(), b.clone()], &m, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            (im.sequence_count, im.document_count, im.token_count),
            (3, 5, 6)
        );
        let bin = fs::read(bin_path(&m)).unwrap();
        assert_eq!(
            bin,
            [1u16, 2, 3, 7, 9, 9]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()
        );
        // no scratch files left behind
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter()
                .all(|n| !n.to_string_lossy().ends_with(".partial")),
            "{left:?}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cancelled_merge_leaves_nothing() {
        let dir = tmpdir("cancel");
        let a = dir.join("a").to_string_lossy().into_owned();
        write(&a, &[vec![1, 2, 3]], DType::U16);
        let m = dir.join("m").to_string_lossy().into_owned();
        let err = merge(&[a.clone(), a], &m, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.bin", "a.idx"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_merge_input_is_one_line_naming_its_file_and_the_fix() {
        let dir = tmpdir("damaged");
        let [a, b, m] = ["a", "b", "m"].map(|n| dir.join(n).to_string_lossy().into_owned());
        write(&a, &[vec![1, 2, 3]], DType::U16);
        write(&b, &[vec![4, 5]], DType::U16);
        let fix = |p: &str| {
            format!(
                " (an input of the merge: copy or write {p} again, or leave it out of the merge)"
            )
        };
        // b's `.bin` cut short (an interrupted copy), then b's `.idx` unreadable.
        let bin = fs::read(bin_path(&b)).unwrap();
        fs::write(bin_path(&b), &bin[..3]).unwrap();
        let err = merge(&[a.clone(), b.clone()], &m, &AtomicBool::new(false)).unwrap_err();
        let want = format!(
            "{}: .bin is 3 bytes but the index describes 2 tokens x 2 bytes = 4{}",
            idx_path(&b).display(),
            fix(&b)
        );
        assert_eq!(err.to_string(), want);
        fs::write(bin_path(&b), &bin).unwrap();
        fs::remove_file(idx_path(&b)).unwrap();
        fs::create_dir(idx_path(&b)).unwrap();
        for inputs in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
            let err = merge(&inputs, &m, &AtomicBool::new(false))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{}: ", idx_path(&b).display())),
                "{err}"
            );
            assert!(err.ends_with(&fix(&b)) && !err.contains('\n'), "{err}");
        }
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.bin", "a.idx", "b.bin", "b.idx"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reader_returns_documents_and_max_token_for_each_dtype() {
        let dir = tmpdir("reader");
        let docs = vec![vec![1, 0, 1], vec![], vec![255, 7]];
        for dtype in [DType::U8, DType::U16, DType::I32] {
            let p = dir.join(dtype.name()).to_string_lossy().into_owned();
            write(&p, &docs, dtype);
            let r = IndexReader::open(&p).unwrap();
            assert_eq!(r.info().dtype, dtype);
            assert_eq!(r.document_count(), 3);
            let got: Vec<Vec<u32>> = (0..3).map(|i| r.document(i).unwrap()).collect();
            assert_eq!(got, docs);
            assert!(r.document(3).is_err());
            assert_eq!(r.max_token().unwrap(), Some(255));
        }
        let p = dir.join("narrow").to_string_lossy().into_owned();
        let mut w = IndexedWriter::create(&p, DType::U8).unwrap();
        let err = w.add_document(&[256], &[1]).unwrap_err().to_string();
        assert_eq!(err, "token id 256 does not fit uint8");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn io_errors_name_the_file() {
        let dir = tmpdir("io");
        let p = dir.join("x").to_string_lossy().into_owned();
        let mut w = IndexedWriter::create(&p, DType::U16).unwrap();
        w.add_document(&[1, 2], &[2]).unwrap();
        let lengths = dir.join("x.idx.lengths.partial");
        fs::remove_file(&lengths).unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: ", lengths.display())),
            "{err}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_error_renaming_one_output_leaves_no_old_dataset_beside_a_new_one() {
        let dir = tmpdir("publish");
        let [a, b] = ["a", "b"].map(|n| dir.join(n).to_string_lossy().into_owned());
        write(&a, &[vec![1]], DType::U16);
        // b's `.idx` cannot be removed to make way for the new one.
        fs::create_dir_all(dir.join("b.idx").join("x")).unwrap();
        let writers = [&a, &b].map(|p| {
            let mut w = IndexedWriter::create(p, DType::U16).unwrap();
            w.add_document(&[2], &[1]).unwrap();
            w
        });
        let err = finish_all(writers.into()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: ", idx_path(&b).display())),
            "{err}"
        );
        // a's old `.idx` is gone (its old dataset would stand beside b's new one otherwise) and
        // its new files are not in place.
        assert!(!idx_path(&a).exists());
        assert_eq!(fs::read(bin_path(&a)).unwrap(), 1u16.to_le_bytes());
        assert!(!bin_path(&b).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_folder_is_synced_after_the_renames_and_its_errors_name_it() {
        let dir = tmpdir("syncdir");
        sync_dir(&dir).unwrap();
        sync_dir(Path::new(".")).unwrap();
        let gone = dir.join("gone");
        let err = sync_dir(&gone).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", gone.display())), "{err}");
        assert_eq!(folder_of("x"), Path::new("."));
        assert_eq!(folder_of(&format!("{}/x", dir.display())), dir);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tmpdir("drop");
        let p = dir.join("x").to_string_lossy().into_owned();
        {
            let mut w = IndexedWriter::create(&p, DType::U16).unwrap();
            w.add_document(&[1, 2], &[2]).unwrap();
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    proptest! {
        /// The `.idx` reader never panics, whatever the bytes.
        #[test]
        fn index_reader_survives_garbage(mut data in proptest::collection::vec(any::<u8>(), 0..200), bin in 0u64..64, magic in any::<bool>()) {
            if magic && data.len() >= 18 {
                data[..9].copy_from_slice(INDEX_HEADER);
                data[9..17].copy_from_slice(&1u64.to_le_bytes());
            }
            let _ = parse_index(&data, bin);
        }

        /// Valid indices parse to what was written; any single corrupted byte or truncation is
        /// either rejected or still self-consistent.
        #[test]
        fn index_reader_roundtrip(docs in proptest::collection::vec(proptest::collection::vec(0u32..1000, 0..5), 1..6), cut in 0usize..400) {
            let dir = tmpdir(&format!("prop{cut}"));
            let p = dir.join("d").to_string_lossy().into_owned();
            write(&p, &docs, DType::U16);
            let data = fs::read(idx_path(&p)).unwrap();
            let bin = fs::metadata(bin_path(&p)).unwrap().len();
            let info = parse_index(&data, bin).unwrap();
            prop_assert_eq!(info.document_count as usize, docs.len() + 1);
            prop_assert_eq!(info.token_count as usize, docs.iter().map(Vec::len).sum::<usize>());
            if cut < data.len() {
                prop_assert!(parse_index(&data[..cut], bin).is_err());
            }
            prop_assert!(parse_index(&data, bin + 2).is_err());
            fs::remove_dir_all(dir).unwrap();
        }
    }
}
