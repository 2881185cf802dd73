//! JSONL corpora → Megatron indexed datasets, in parallel.
//!
//! One reader thread cuts the inputs into numbered batches of whole lines; `threads` workers
//! parse and tokenize batches; the calling thread writes results strictly in batch order, so the
//! output is the same for any thread count. A fixed number of batch "slots" circulates between
//! the reader and the writer, which bounds the memory in flight however large the input.
//! Invalid lines are judged in input order by the writer too: the first one stops the run (its
//! file and line are named) unless `skip_invalid` is set, in which case they are counted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::jsonl::{
    check_compression_name, extract_fields, open_input, LineBatch, LineBatcher, STOP_POLL_MS,
};
use crate::mmidx::{finish_all, DType, IdDoesNotFit, IndexedWriter};
use crate::tokenizer::{Tokenizer, TokenizerState};

#[derive(Debug, Clone)]
pub struct Job {
    pub inputs: Vec<PathBuf>,
    pub output_prefix: String,
    pub json_keys: Vec<String>,
    /// Append this id (the EOD/EOS token) to every non-empty document.
    pub append_eod: Option<u32>,
    /// Prepend this id (BOS) to every document, as Megatron-LM's legacy Llama2Tokenizer does.
    pub prepend_bos: Option<u32>,
    pub threads: usize,
    pub skip_invalid: bool,
    /// Target size of one batch of lines.
    pub batch_bytes: usize,
}

impl Job {
    /// Megatron's naming: `{prefix}_{key}_document`.
    pub fn output_prefixes(&self) -> Vec<String> {
        self.json_keys
            .iter()
            .map(|k| format!("{}_{}_document", self.output_prefix, k))
            .collect()
    }
}

/// Counters the caller can read while a job runs (and a flag to cancel it).
#[derive(Debug, Default)]
pub struct Progress {
    pub documents: AtomicU64,
    pub bytes: AtomicU64,
    pub tokens: AtomicU64,
    pub skipped: AtomicU64,
    pub cancel: AtomicBool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub documents: u64,
    pub empty_documents: u64,
    pub skipped: u64,
    /// Uncompressed bytes of JSON read.
    pub bytes: u64,
    /// Tokens written, over all keys.
    pub tokens: u64,
    pub outputs: Vec<String>,
    pub dtype: DType,
    pub seconds_x1000: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A bad input line, named by file and line number.
    #[error("{}:{line}: {reason} (fix the line, or pass --skip-invalid to skip such lines)", file.display())]
    InvalidLine {
        file: PathBuf,
        line: u64,
        reason: String,
    },
    /// An input the reader cannot take, named.
    #[error("{0}")]
    Input(String),
    /// An output would hold no token: Megatron cannot load an empty `.bin`.
    #[error("{what}: nothing written (give input with text under every --json-keys key)")]
    Empty { what: String },
    #[error("{0}")]
    Io(String),
    /// A compressed input that cannot be decoded to its end.
    #[error("{0} (the compressed file is damaged or truncated: test it with gzip -t or zstd -t, and write it again)")]
    Damaged(String),
    #[error("{0}")]
    Tokenizer(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<std::io::Error> for PipelineError {
    fn from(e: std::io::Error) -> Self {
        PipelineError::Io(e.to_string())
    }
}

/// The tokens of one batch for one key: all documents back to back.
#[derive(Default)]
struct KeyTokens {
    ids: Vec<u32>,
    /// Tokens per document (0 for an empty document).
    doc_lens: Vec<u32>,
}

struct BatchResult {
    file: usize,
    first_line: u64,
    bytes: u64,
    lines: usize,
    per_key: Vec<KeyTokens>,
    /// (line index in batch, reason) of lines that are not documents, in order; no reason for
    /// a blank line (skipped silently, as every JSONL reader of vikhr does).
    unused: Vec<(usize, Option<String>)>,
}

enum Work {
    Batch(u64, LineBatch),
    Fail(u64, PipelineError),
}

enum Done {
    Batch(u64, BatchResult),
    Fail(u64, PipelineError),
}

fn tokenize_batch(
    job: &Job,
    tok: &Tokenizer,
    state: &mut TokenizerState,
    batch: &LineBatch,
) -> Result<BatchResult, PipelineError> {
    // About one token per 4 bytes of JSON: reserve once instead of growing (and copying) the
    // id buffer many times per batch.
    let mut per_key: Vec<KeyTokens> = job
        .json_keys
        .iter()
        .map(|_| KeyTokens {
            ids: Vec::with_capacity(batch.data.len() / 4 + 16),
            doc_lens: Vec::with_capacity(batch.len()),
        })
        .collect();
    let mut unused = Vec::new();
    for (i, line) in batch.lines().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            unused.push((i, None));
            continue;
        }
        let texts = match extract_fields(line, &job.json_keys) {
            Ok(t) => t,
            Err(e) => {
                unused.push((i, Some(e.to_string())));
                continue;
            }
        };
        for (text, kt) in texts.iter().zip(per_key.iter_mut()) {
            let start = kt.ids.len();
            if let Some(bos) = job.prepend_bos {
                kt.ids.push(bos);
            }
            tok.encode_into(text, state, &mut kt.ids)
                .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
            // Megatron appends EOD only to documents that have tokens.
            if kt.ids.len() > start {
                if let Some(eod) = job.append_eod {
                    kt.ids.push(eod);
                }
            }
            kt.doc_lens.push((kt.ids.len() - start) as u32);
        }
    }
    Ok(BatchResult {
        file: batch.file,
        first_line: batch.first_line,
        bytes: batch.data.len() as u64,
        lines: batch.len(),
        per_key,
        unused,
    })
}

/// A read error in the middle of `path`: from a gzip or zstd file, almost always a damaged one.
fn read_error(path: &Path, e: std::io::Error) -> PipelineError {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let what = format!("{}: {e}", path.display());
    if [".gz", ".zst", ".zstd"].iter().any(|s| name.ends_with(s)) {
        PipelineError::Damaged(what)
    } else {
        PipelineError::Io(what)
    }
}

fn read_all(job: &Job, work: Sender<Work>, slots: Receiver<()>, stop: &Arc<AtomicBool>) {
    let mut seq = 0u64;
    for (fi, path) in job.inputs.iter().enumerate() {
        let reader = match open_input(path, Arc::clone(stop)) {
            Ok(r) => r,
            Err(_) if stop.load(Ordering::Relaxed) => return,
            Err(e) => {
                let e = match e.kind() {
                    // Compressed data under a plain name: the input's fault, named.
                    std::io::ErrorKind::InvalidData => PipelineError::Input(e.to_string()),
                    _ => e.into(),
                };
                let _ = work.send(Work::Fail(seq, e));
                return;
            }
        };
        let mut batcher = LineBatcher::new(reader, fi, job.batch_bytes);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match batcher.next_batch() {
                Ok(Some(b)) => {
                    // A slot per batch sent (the writer gives it back): taken only for a batch, as
                    // the end of a file sends none and would keep it for good.
                    if slots.recv().is_err() || work.send(Work::Batch(seq, b)).is_err() {
                        return;
                    }
                    seq += 1;
                }
                Ok(None) => break,
                // The run has ended (a stop, an error): the read waiting on a pipe was given up.
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(e) => {
                    let _ = work.send(Work::Fail(seq, read_error(path, e)));
                    return;
                }
            }
        }
    }
}

fn work_loop(job: &Job, tok: &Tokenizer, work: &Mutex<Receiver<Work>>, done: Sender<Done>) {
    let mut state = TokenizerState::default();
    loop {
        let item = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let msg = match item {
            Ok(Work::Batch(seq, b)) => match tokenize_batch(job, tok, &mut state, &b) {
                Ok(r) => Done::Batch(seq, r),
                Err(e) => Done::Fail(seq, e),
            },
            Ok(Work::Fail(seq, e)) => Done::Fail(seq, e),
            Err(_) => return,
        };
        if done.send(msg).is_err() {
            return;
        }
    }
}

fn write_all(
    job: &Job,
    vocab_size: usize,
    writers: &mut [IndexedWriter],
    done: Receiver<Done>,
    slots: SyncSender<()>,
    progress: &Progress,
) -> Result<(u64, u64), PipelineError> {
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next = 0u64;
    let (mut empty, mut skipped) = (0u64, 0u64);
    let mut lens = [0u64; 1];
    loop {
        // A cancel is seen while no batch comes (the reader waits on a pipe that sends nothing).
        let msg = match done.recv_timeout(Duration::from_millis(STOP_POLL_MS as u64)) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) if progress.cancel.load(Ordering::Relaxed) => {
                return Err(PipelineError::Cancelled)
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let seq = match &msg {
            Done::Batch(s, _) | Done::Fail(s, _) => *s,
        };
        pending.insert(seq, msg);
        while let Some(msg) = pending.remove(&next) {
            next += 1;
            if progress.cancel.load(Ordering::Relaxed) {
                return Err(PipelineError::Cancelled);
            }
            let r = match msg {
                Done::Fail(_, e) => return Err(e),
                Done::Batch(_, r) => r,
            };
            let mut unused = r.unused.iter().peekable();
            let mut offsets = vec![0usize; writers.len()];
            let mut doc = 0usize;
            for line in 0..r.lines {
                if let Some(&&(i, ref reason)) = unused.peek() {
                    if i == line {
                        unused.next();
                        match reason {
                            None => {}
                            Some(reason) if !job.skip_invalid => {
                                return Err(PipelineError::InvalidLine {
                                    file: job.inputs[r.file].clone(),
                                    line: r.first_line + line as u64,
                                    reason: reason.clone(),
                                })
                            }
                            Some(_) => skipped += 1,
                        }
                        continue;
                    }
                }
                for (k, w) in writers.iter_mut().enumerate() {
                    let kt = &r.per_key[k];
                    let n = kt.doc_lens[doc] as usize;
                    let ids = &kt.ids[offsets[k]..offsets[k] + n];
                    offsets[k] += n;
                    lens[0] = n as u64;
                    w.add_document(ids, if n == 0 { &[] } else { &lens })
                        .map_err(|e| match e.get_ref().and_then(|e| e.downcast_ref()) {
                            // The tokenizer's error, not the disk's.
                            Some(IdDoesNotFit { id, dtype }) => PipelineError::Tokenizer(format!(
                                "{}:{}: the tokenizer gave id {id}, outside its vocabulary of \
                                 {vocab_size} ids (the dataset's dtype {} cannot hold it): \
                                 check the tokenizer file",
                                job.inputs[r.file].display(),
                                r.first_line + line as u64,
                                dtype.name(),
                            )),
                            None => e.into(),
                        })?;
                    if n == 0 && k == 0 {
                        empty += 1;
                    }
                    progress.tokens.fetch_add(n as u64, Ordering::Relaxed);
                }
                doc += 1;
            }
            progress.documents.fetch_add(doc as u64, Ordering::Relaxed);
            progress.skipped.store(skipped, Ordering::Relaxed);
            progress.bytes.fetch_add(r.bytes, Ordering::Relaxed);
            // Hand the slot back to the reader.
            let _ = slots.send(());
        }
    }
    Ok((empty, skipped))
}

/// Run `job`: read, tokenize and write every output, or leave no output at all.
pub fn run(job: &Job, tok: &Tokenizer, progress: &Progress) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    if job.json_keys.is_empty() {
        return Err(PipelineError::Io("no --json-keys given".into()));
    }
    // Refused before any output is written, not at the file's first line.
    for path in &job.inputs {
        check_compression_name(path).map_err(PipelineError::Input)?;
    }
    let vocab_size = tok.vocab_size();
    let dtype = DType::optimal(vocab_size);
    let prefixes = job.output_prefixes();
    // The writers take over what a killed run left of these datasets; a scratch file of another
    // dataset in the folder (another prefix or key) may be a run in progress and is not touched
    // here (vikhr.data.indexed removes those of killed runs, by their locks).
    let mut writers = prefixes
        .iter()
        .map(|p| IndexedWriter::create(p, dtype))
        .collect::<Result<Vec<_>, _>>()?;
    let threads = job.threads.max(1);
    let n_slots = 2 * threads + 2;
    let (slot_tx, slot_rx) = sync_channel::<()>(n_slots);
    for _ in 0..n_slots {
        slot_tx.send(()).expect("fresh channel");
    }
    let (work_tx, work_rx) = channel::<Work>();
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = channel::<Done>();
    let stop = Arc::new(AtomicBool::new(false));
    let result = std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || read_all(job, work_tx, slot_rx, stop));
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let work_rx = &work_rx;
            s.spawn(move || work_loop(job, tok, work_rx, done_tx));
        }
        drop(done_tx);
        let r = write_all(job, vocab_size, &mut writers, done_rx, slot_tx, progress);
        // Unblock the reader (its channels are closed now, and a read waiting on a pipe ends) and
        // so the workers, before joining them.
        stop.store(true, Ordering::Relaxed);
        r
    });
    let (empty, skipped) = result?;
    // Refuse rather than write a dataset Megatron cannot load (it cannot mmap an empty `.bin`).
    let documents = progress.documents.load(Ordering::Relaxed);
    if documents == 0 {
        let what = format!(
            "no documents in {} input file(s) (every line is blank{})",
            job.inputs.len(),
            if skipped > 0 { " or invalid" } else { "" }
        );
        return Err(PipelineError::Empty { what });
    }
    if let Some((w, key)) = writers
        .iter()
        .zip(&job.json_keys)
        .find(|(w, _)| w.tokens() == 0)
    {
        let what = format!(
            "all {documents} documents have an empty {key:?} ({} would hold no token)",
            w.prefix()
        );
        return Err(PipelineError::Empty { what });
    }
    let tokens = writers.iter().map(|w| w.tokens()).sum();
    // Last chance to stop with nothing written: the outputs are then published together.
    if progress.cancel.load(Ordering::Relaxed) {
        return Err(PipelineError::Cancelled);
    }
    finish_all(writers)?;
    Ok(Summary {
        documents,
        empty_documents: empty,
        skipped,
        bytes: progress.bytes.load(Ordering::Relaxed),
        tokens,
        outputs: prefixes,
        dtype,
        seconds_x1000: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    fn model() -> Tokenizer {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../vikhr/assets/tokenizers/mistral-7b-v0.1.model");
        Tokenizer::sentencepiece(&p).unwrap()
    }

    /// An empty directory for the test `name`, of this process (what an earlier run left is removed).
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vikhr-pipe-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The names of the scratch (`.partial`) files in `dir`, sorted.
    fn scratch_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        names.sort();
        names
    }

    fn job(dir: &Path, input: PathBuf, threads: usize, name: &str) -> Job {
        Job {
            inputs: vec![input],
            output_prefix: dir.join(name).to_string_lossy().into_owned(),
            json_keys: vec!["text".into(), "title".into()],
            append_eod: Some(2),
            prepend_bos: None,
            threads,
            skip_invalid: false,
            batch_bytes: 64,
        }
    }

    #[test]
    fn same_output_for_any_thread_count_and_bad_lines_are_named() {
        let dir = fresh_dir("threads");
        let input = dir.join("in.jsonl");
        let mut f = fs::File::create(&input).unwrap();
        for i in 0..300 {
            let text = if i % 17 == 0 {
                String::new()
            } else {
                format!("Документ номер {i}: {}", "слово ".repeat(i % 13))
            };
            writeln!(
                f,
                "{}",
                serde_json::json!({"text": text, "title": format!("T{i}")})
            )
            .unwrap();
        }
        drop(f);
        let tok = model();
        let mut outputs = Vec::new();
        for threads in [1, 2, 8] {
            let j = job(&dir, input.clone(), threads, &format!("t{threads}"));
            let s = run(&j, &tok, &Progress::default()).unwrap();
            assert_eq!((s.documents, s.skipped), (300, 0));
            let files: Vec<Vec<u8>> = j
                .output_prefixes()
                .iter()
                .flat_map(|p| {
                    [
                        fs::read(format!("{p}.bin")).unwrap(),
                        fs::read(format!("{p}.idx")).unwrap(),
                    ]
                })
                .collect();
            outputs.push(files);
        }
        assert_eq!(outputs[0], outputs[1]);
        assert_eq!(outputs[0], outputs[2]);

        // A bad line 5 is reported by number, leaves no output; --skip-invalid counts it.
        let bad = dir.join("bad.jsonl");
        let mut text = fs::read_to_string(&input).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[4] = "{\"text\": oops}";
        text = lines.join("\n");
        fs::write(&bad, text).unwrap();
        let j = job(&dir, bad.clone(), 2, "bad");
        let err = run(&j, &tok, &Progress::default()).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:5:"), "{err}");
        assert!(!Path::new(&format!("{}.idx", j.output_prefixes()[0])).exists());
        let mut j = job(&dir, bad, 2, "skip");
        j.skip_invalid = true;
        let s = run(&j, &tok, &Progress::default()).unwrap();
        assert_eq!((s.documents, s.skipped), (299, 1));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn more_input_files_than_batches_in_flight() {
        // Each file's end used to keep one of the 2 * threads + 2 slots: the 5th file hung.
        let dir = fresh_dir("files");
        let mut inputs = Vec::new();
        let mut all = String::new();
        for i in 0..40 {
            let line = format!(
                "{}\n",
                serde_json::json!({"text": format!("файл {i}"), "title": "t"})
            );
            let path = dir.join(format!("f{i:02}.jsonl"));
            fs::write(&path, &line).unwrap();
            inputs.push(path);
            all.push_str(&line);
        }
        fs::write(dir.join("all.jsonl"), all).unwrap();
        let mut many = job(&dir, PathBuf::new(), 1, "many");
        many.inputs = inputs;
        let one = job(&dir, dir.join("all.jsonl"), 1, "one");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let tok = model();
            let runs = [&many, &one].map(|j| run(j, &tok, &Progress::default()).unwrap().documents);
            let files =
                [&many, &one].map(|j| fs::read(format!("{}.bin", j.output_prefixes()[0])).unwrap());
            tx.send((runs, files)).unwrap();
        });
        let (runs, files) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("preprocessing 40 files did not finish");
        assert_eq!(runs, [40, 40]);
        assert_eq!(files[0], files[1]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_run_takes_over_what_a_killed_run_left_of_its_datasets_and_nothing_else() {
        let dir = fresh_dir("others");
        let input = dir.join("in.jsonl");
        fs::write(&input, "{\"text\": \"a\", \"title\": \"b\"}\n").unwrap();
        let prefix = |name: &str| dir.join(name).to_string_lossy().into_owned();
        // Runs in progress in the same folder: another prefix that starts like this one, and
        // another key of this prefix. Both used to lose their scratch files, then fail at the end.
        let mut others = ["ru_lit_text_document", "ru_body_document"].map(|name| {
            let mut w = IndexedWriter::create(&prefix(name), DType::U16).unwrap();
            w.add_document(&[5, 6], &[2]).unwrap();
            w
        });
        // What a killed run left of this run's own datasets.
        let stale = dir.join("ru_text_document.idx.tmp.partial");
        fs::write(&stale, b"x").unwrap();
        run(&job(&dir, input, 1, "ru"), &model(), &Progress::default()).unwrap();
        assert!(!stale.exists());
        for w in &mut others {
            w.add_document(&[7], &[1]).unwrap();
        }
        for (w, name) in others
            .into_iter()
            .zip(["ru_lit_text_document", "ru_body_document"])
        {
            w.finish().unwrap();
            let r = crate::mmidx::IndexReader::open(&prefix(name)).unwrap();
            assert_eq!(r.document(1).unwrap(), [7]);
        }
        let left = scratch_files(&dir);
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cancel_ends_a_run_whose_fifo_sends_nothing_and_leaves_no_output() {
        let dir = fresh_dir("fifo");
        let fifo = dir.join("in.jsonl");
        let c_path = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // A writer that has opened the FIFO and sends nothing, then none at all (the open waited).
        for writer in [true, false] {
            let held = writer.then(|| {
                // Read-write: it opens without a reader, and keeps the FIFO open.
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&fifo)
                    .unwrap()
            });
            let progress = Arc::new(Progress::default());
            let (ended_tx, ended) = channel();
            let (job, running) = (job(&dir, fifo.clone(), 2, "ru"), Arc::clone(&progress));
            // Not scoped: a run that does not stop must fail the test, not hang it.
            std::thread::spawn(move || ended_tx.send(run(&job, &model(), &running)));
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                ended.try_recv().is_err(),
                "the run ended although its input is open"
            );
            progress.cancel.store(true, Ordering::Relaxed);
            let r = ended
                .recv_timeout(Duration::from_secs(30))
                .expect("the run did not stop");
            assert!(matches!(r, Err(PipelineError::Cancelled)), "{r:?}");
            let left: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, ["in.jsonl"], "writer {writer}");
            drop(held);
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_error_writing_one_output_publishes_none() {
        // The outputs were published one by one: a full disk while the title's `.idx` was written
        // left the new text dataset beside the old title dataset, both valid.
        let dir = fresh_dir("publish");
        let input = dir.join("in.jsonl");
        let tok = model();
        let j = job(&dir, input.clone(), 1, "ru");
        let files = |j: &Job| -> Vec<Vec<u8>> {
            j.output_prefixes()
                .iter()
                .flat_map(|p| [".bin", ".idx"].map(|ext| fs::read(format!("{p}{ext}")).unwrap()))
                .collect()
        };
        fs::write(&input, "{\"text\": \"старый\", \"title\": \"old\"}\n").unwrap();
        run(&j, &tok, &Progress::default()).unwrap();
        let old = files(&j);
        // The title's `.idx` cannot be written: its scratch name is taken by a directory.
        let blocked = dir.join("ru_title_document.idx.tmp.partial");
        fs::create_dir(&blocked).unwrap();
        fs::write(&input, "{\"text\": \"новый\", \"title\": \"new\"}\n").unwrap();
        let err = run(&j, &tok, &Progress::default()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: ", blocked.display())),
            "{err}"
        );
        assert_eq!(files(&j), old);
        fs::remove_dir(&blocked).unwrap();
        let left = scratch_files(&dir);
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_dtype_holds_the_largest_id_and_an_id_past_the_vocabulary_names_its_line() {
        let dir = fresh_dir("ids");
        let input = dir.join("in.jsonl");
        fs::write(&input, "\n{\"text\": \"a b\", \"title\": \"b\"}\n").unwrap();
        let tokenizer = |vocab: serde_json::Value, post: serde_json::Value| {
            let path = dir.join("tokenizer.json");
            let v = serde_json::json!({"model": {"type": "WordLevel", "unk_token": "[UNK]",
                "vocab": vocab}, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": post});
            fs::write(&path, v.to_string()).unwrap();
            Tokenizer::huggingface(&path, true).unwrap()
        };
        // Three tokens with ids up to 70000: int32 (a uint16 dataset failed at the first "b").
        let tok = tokenizer(
            serde_json::json!({"[UNK]": 0, "a": 1, "b": 70000}),
            serde_json::Value::Null,
        );
        let s = run(
            &job(&dir, input.clone(), 1, "gap"),
            &tok,
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(s.dtype, DType::I32);
        let r = crate::mmidx::IndexReader::open(&s.outputs[0]).unwrap();
        assert_eq!(r.document(0).unwrap(), [1, 70000, 2]);
        // A post-processor adding an id outside the vocabulary: the tokenizer's error, at the
        // line it was met (an I/O error naming nothing before).
        let bos = serde_json::json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [70000], "tokens": ["<s>"]}}});
        let tok = tokenizer(serde_json::json!({"[UNK]": 0, "a": 1, "b": 2}), bos);
        let err = run(
            &job(&dir, input.clone(), 1, "past"),
            &tok,
            &Progress::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PipelineError::Tokenizer(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: the tokenizer gave id 70000, outside its vocabulary of 3 ids (the \
                 dataset's dtype uint16 cannot hold it): check the tokenizer file",
                input.display()
            )
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_input_in_an_unsupported_compression_is_refused_by_name() {
        let dir = fresh_dir("xz");
        let plain = dir.join("in.jsonl");
        fs::write(&plain, "{\"text\": \"a\", \"title\": \"b\"}\n").unwrap();
        for name in ["in.jsonl.xz", "IN.JSONL.BZ2"] {
            // xz's magic bytes: read as text they were "not valid UTF-8 ... --skip-invalid".
            let packed = dir.join(name);
            fs::write(&packed, b"\xfd7zXZ\x00\x00\x04").unwrap();
            let mut j = job(&dir, plain.clone(), 1, "out");
            j.inputs.push(packed.clone());
            let err = run(&j, &model(), &Progress::default()).unwrap_err();
            let suffix = &name[name.rfind('.').unwrap()..];
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: unsupported compression ({}); decompress it or recompress with gzip/zstd",
                    packed.display(),
                    suffix.to_ascii_lowercase()
                )
            );
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 3); // no output begun
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compressed_data_under_a_plain_name_is_named() {
        // Read as text, every one was "not UTF-8 (byte 0x..)" at line 1.
        let dir = fresh_dir("hidden");
        let plain = dir.join("in.jsonl");
        fs::write(&plain, "{\"text\": \"a\", \"title\": \"b\"}\n").unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&fs::read(&plain).unwrap()).unwrap();
        let unsupported = "which the readers do not decode: decompress it, or recompress it with \
                           gzip/zstd";
        let cases: [(&str, Vec<u8>, String); 3] = [
            (
                "gz.jsonl",
                gz.finish().unwrap(),
                "name it gz.jsonl.gz".into(),
            ),
            (
                "xz.jsonl",
                b"\xfd7zXZ\x00\x00\x04\xe6\xd6".to_vec(),
                format!("xz-compressed data, {unsupported}"),
            ),
            (
                "bz2.json",
                b"BZh91AY&SY\x00\x01".to_vec(),
                format!("bzip2-compressed data, {unsupported}"),
            ),
        ];
        for (name, data, said) in cases {
            let hidden = dir.join(name);
            fs::write(&hidden, data).unwrap();
            let mut j = job(&dir, plain.clone(), 1, "out");
            j.inputs.push(hidden.clone());
            let err = run(&j, &model(), &Progress::default()).unwrap_err();
            assert!(matches!(err, PipelineError::Input(_)), "{err:?}");
            let err = err.to_string();
            assert!(
                err.starts_with(&format!("{} holds ", hidden.display())),
                "{err}"
            );
            assert!(err.ends_with(&said), "{err}");
            fs::remove_file(hidden).unwrap();
        }
        // Text that starts as bzip2 does, but not with a block: read as text.
        fs::write(&plain, "BZh9\n{\"text\": \"a\", \"title\": \"b\"}\n").unwrap();
        let mut j = job(&dir, plain.clone(), 1, "text");
        j.skip_invalid = true;
        assert_eq!(run(&j, &model(), &Progress::default()).unwrap().skipped, 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn blank_lines_are_skipped_and_empty_inputs_refused() {
        let dir = fresh_dir("blank");
        let tok = model();
        let input = dir.join("in.jsonl");
        fs::write(&input, "{\"text\": \"a\", \"title\": \"b\"}\n\n  \r\n").unwrap();
        let s = run(
            &job(&dir, input.clone(), 1, "ok"),
            &tok,
            &Progress::default(),
        )
        .unwrap();
        assert_eq!((s.documents, s.skipped), (1, 0));

        fs::write(&input, "\n\n").unwrap();
        let err = run(
            &job(&dir, input.clone(), 1, "none"),
            &tok,
            &Progress::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("no documents in 1 input file(s)"), "{err}");
        fs::write(&input, "{\"text\": \"\", \"title\": \"b\"}\n").unwrap();
        let err = run(&job(&dir, input, 1, "empty"), &tok, &Progress::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty \"text\""), "{err}");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter().all(|n| !n.to_string_lossy().starts_with("none")
                && !n.to_string_lossy().starts_with("empty")),
            "{left:?}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
