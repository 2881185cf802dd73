//! `vikhr._core`: a thin PyO3 skin over `vikhr-core`. No logic lives here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use vikhr_core::jsonl::LineError;
use vikhr_core::mmidx::{self, DType, IndexInfo, IndexReader, IndexedWriter};
use vikhr_core::pipeline::{self, Job, PipelineError, Progress};
use vikhr_core::tokenizer::Tokenizer;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", vikhr_core::VERSION)?;
    m.add("SCRATCH_SUFFIXES", mmidx::SCRATCH_SUFFIXES.to_vec())?;
    m.add_function(wrap_pyfunction!(default_threads, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_index, m)?)?;
    m.add_function(wrap_pyfunction!(merge_datasets, m)?)?;
    m.add_function(wrap_pyfunction!(token_dtype, m)?)?;
    m.add_function(wrap_pyfunction!(check_plain_content, m)?)?;
    m.add_function(wrap_pyfunction!(not_text_field, m)?)?;
    m.add_class::<NativeTokenizer>()?;
    m.add_class::<IndexedDatasetWriter>()?;
    m.add_class::<IndexedDatasetReader>()?;
    Ok(())
}

/// Number of worker threads used when a caller passes `threads=0`.
#[pyfunction]
fn default_threads() -> usize {
    vikhr_core::default_threads()
}

/// ValueError when `head`, the first bytes of the file `path` named as plain text, is compressed
/// data (the JSONL readers' check, shared with the Python reader).
#[pyfunction]
fn check_plain_content(path: PathBuf, head: &[u8]) -> PyResult<()> {
    vikhr_core::jsonl::check_plain_content(&path, head).map_err(value_err)
}

/// For the field `key` wanted as text, whose value is the JSON text `value`: None for a string,
/// else (the reader's message for it, whether the value is a chat, whether the message says how to
/// fix the line). ValueError for no JSON value.
#[pyfunction]
fn not_text_field(key: String, value: &str) -> PyResult<Option<(String, bool, bool)>> {
    let kind = vikhr_core::jsonl::not_text(value).map_err(value_err)?;
    Ok(kind.map(|k| {
        let said = LineError::NotString(key, k).to_string();
        (said, k.is_chat(), k.says_its_fix())
    }))
}

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn os_err(e: impl std::fmt::Display) -> PyErr {
    PyOSError::new_err(e.to_string())
}

/// A tokenizer loaded once by the native core: the encoder `preprocess` runs, and the vocabulary
/// questions (`vocab_size`, `token_to_id`) asked before it runs.
#[pyclass(module = "vikhr._core", name = "Tokenizer", frozen)]
struct NativeTokenizer {
    inner: Tokenizer,
}

#[pymethods]
impl NativeTokenizer {
    /// `kind` "sentencepiece" (a `.model`) or "huggingface" (a `tokenizer.json`, whose
    /// post-processor runs when `add_special_tokens`). Raises ValueError when it cannot be loaded.
    #[new]
    #[pyo3(signature = (kind, path, *, add_special_tokens=false))]
    fn new(py: Python<'_>, kind: &str, path: PathBuf, add_special_tokens: bool) -> PyResult<Self> {
        let inner = py.detach(|| match kind {
            "sentencepiece" => Tokenizer::sentencepiece(&path).map_err(|e| e.to_string()),
            "huggingface" => {
                Tokenizer::huggingface(&path, add_special_tokens).map_err(|e| e.to_string())
            }
            _ => Err(format!("unknown tokenizer kind {kind:?}")),
        });
        Ok(NativeTokenizer {
            inner: inner.map_err(value_err)?,
        })
    }

    /// Vocabulary size as Megatron counts it (added tokens included).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// The id of a vocabulary piece or added token, or None.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Tokenize JSONL `inputs` into `{output_prefix}_{key}_document.bin/.idx`; returns a summary dict.
/// `eod_id` is appended to every non-empty document and `bos_id` prepended to every document
/// when given. `progress(documents, bytes, tokens, skipped)` is called about every 0.2 s.
#[pyfunction]
#[pyo3(signature = (inputs, output_prefix, json_keys, tokenizer, *, eod_id=None,
    bos_id=None, threads=0, skip_invalid=false, batch_bytes=1<<20,
    progress=None))]
#[allow(clippy::too_many_arguments)]
fn preprocess<'py>(
    py: Python<'py>,
    inputs: Vec<PathBuf>,
    output_prefix: String,
    json_keys: Vec<String>,
    tokenizer: Py<NativeTokenizer>,
    eod_id: Option<u32>,
    bos_id: Option<u32>,
    threads: usize,
    skip_invalid: bool,
    batch_bytes: usize,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let tok = &tokenizer.get().inner;
    let job = Job {
        inputs,
        output_prefix,
        json_keys,
        append_eod: eod_id,
        prepend_bos: bos_id,
        threads: if threads == 0 {
            vikhr_core::default_threads()
        } else {
            threads
        },
        skip_invalid,
        batch_bytes,
    };
    let counters = Progress::default();
    let report = |cb: &Bound<'py, PyAny>| -> PyResult<()> {
        cb.call1((
            counters.documents.load(Ordering::Relaxed),
            counters.bytes.load(Ordering::Relaxed),
            counters.tokens.load(Ordering::Relaxed),
            counters.skipped.load(Ordering::Relaxed),
        ))
        .map(|_| ())
    };
    let result = interruptible(
        py,
        &counters.cancel,
        || pipeline::run(&job, tok, &counters),
        |r| matches!(r, Err(PipelineError::Cancelled)),
        || match &progress {
            Some(cb) => report(cb),
            None => Ok(()),
        },
    )?;
    if let Some(cb) = &progress {
        // The last count; a Ctrl-C while it is shown is too late to stop anything (see above).
        if let Err(e) = report(cb) {
            if !e.is_instance_of::<PyKeyboardInterrupt>(py) || result.is_err() {
                return Err(e);
            }
        }
    }
    let summary = result.map_err(|e| match e {
        PipelineError::Cancelled => PyKeyboardInterrupt::new_err("cancelled"),
        PipelineError::Io(m) => os_err(m),
        other => value_err(other),
    })?;
    let d = PyDict::new(py);
    d.set_item("documents", summary.documents)?;
    d.set_item("empty_documents", summary.empty_documents)?;
    d.set_item("skipped", summary.skipped)?;
    d.set_item("bytes", summary.bytes)?;
    d.set_item("tokens", summary.tokens)?;
    d.set_item("outputs", summary.outputs)?;
    d.set_item("dtype", summary.dtype.name())?;
    d.set_item("seconds", summary.seconds_x1000 as f64 / 1000.0)?;
    d.set_item("threads", job.threads)?;
    Ok(d)
}

/// Runs `work` on its own thread while this one, every 0.2 s, lets Python handle signals (Ctrl-C)
/// and calls `tick` (progress). A signal's or `tick`'s error sets `cancel`, which `work` must
/// check; once `work` has stopped for it (`stopped` says so of its result) that error is returned.
/// A signal that comes when `work` is past its last check (its output in place) is too late:
/// `work`'s own result is returned, so a run never reports an interrupt over a complete output.
fn interruptible<T: Send>(
    py: Python<'_>,
    cancel: &AtomicBool,
    work: impl FnOnce() -> T + Send,
    stopped: impl Fn(&T) -> bool,
    mut tick: impl FnMut() -> PyResult<()>,
) -> PyResult<T> {
    let finished = AtomicBool::new(false);
    let (result, interrupted) = std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let r = work();
            finished.store(true, Ordering::Release);
            r
        });
        let mut interrupted: Option<PyErr> = None;
        while !finished.load(Ordering::Acquire) {
            py.detach(|| {
                for _ in 0..20 {
                    if finished.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let step = py.check_signals().and_then(|_| match &interrupted {
                None => tick(),
                Some(_) => Ok(()),
            });
            if let Err(e) = step {
                cancel.store(true, Ordering::Relaxed);
                interrupted.get_or_insert(e);
            }
        }
        (handle.join().expect("worker thread panicked"), interrupted)
    });
    match interrupted {
        Some(e) if stopped(&result) => Err(e),
        _ => Ok(result),
    }
}

fn info_dict<'py>(py: Python<'py>, info: &IndexInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("dtype", info.dtype.name())?;
    d.set_item("sequences", info.sequence_count)?;
    d.set_item("documents", info.document_count - 1)?;
    d.set_item("empty_documents", info.empty_documents)?;
    d.set_item("tokens", info.token_count)?;
    d.set_item("bin_bytes", info.bin_bytes)?;
    d.set_item("multimodal", info.multimodal)?;
    Ok(d)
}

/// Read and validate `{prefix}.idx` against `{prefix}.bin`; raises ValueError when inconsistent.
#[pyfunction]
fn inspect_index<'py>(py: Python<'py>, prefix: &str) -> PyResult<Bound<'py, PyDict>> {
    let info = py.detach(|| mmidx::read_index(prefix)).map_err(value_err)?;
    info_dict(py, &info)
}

/// Concatenate datasets into `output_prefix` (as Megatron's merge tool does).
#[pyfunction]
fn merge_datasets<'py>(
    py: Python<'py>,
    prefixes: Vec<String>,
    output_prefix: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let cancel = AtomicBool::new(false);
    let info = interruptible(
        py,
        &cancel,
        || mmidx::merge(&prefixes, output_prefix, &cancel),
        |r| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::Interrupted),
        || Ok(()),
    )?
    .map_err(os_err)?;
    info_dict(py, &info)
}

/// The token dtype of a dataset for a vocabulary of `vocab_size` ids (Megatron's rule).
#[pyfunction]
fn token_dtype(vocab_size: usize) -> &'static str {
    DType::optimal(vocab_size).name()
}

/// Writes one `{prefix}.bin/.idx` pair, document by document (uint8, uint16 or int32 values).
/// Files appear only on `finish()`; `abort()`, or dropping the writer unfinished, removes them.
#[pyclass(module = "vikhr._core")]
struct IndexedDatasetWriter {
    writer: Option<IndexedWriter>,
}

#[pymethods]
impl IndexedDatasetWriter {
    #[new]
    fn new(prefix: &str, dtype: &str) -> PyResult<Self> {
        let dtype = match dtype {
            "uint8" => DType::U8,
            "uint16" => DType::U16,
            "int32" => DType::I32,
            other => {
                return Err(value_err(format!(
                    "dtype {other:?} cannot be written; use uint8, uint16 or int32"
                )))
            }
        };
        let writer = IndexedWriter::create(prefix, dtype).map_err(os_err)?;
        Ok(Self {
            writer: Some(writer),
        })
    }

    /// Add one document of `ids` as one sequence (none when empty), as Megatron's
    /// preprocess_data.py does.
    fn add_document(&mut self, ids: Vec<u32>) -> PyResult<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| value_err("the writer is closed"))?;
        let lens = [ids.len() as u64];
        let lengths: &[u64] = if ids.is_empty() { &[] } else { &lens };
        w.add_document(&ids, lengths).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => value_err(e),
            _ => os_err(e),
        })
    }

    /// Write the index and move both files to their final names.
    fn finish(&mut self, py: Python<'_>) -> PyResult<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| value_err("the writer is closed"))?;
        py.detach(|| w.finish()).map_err(os_err)
    }

    /// Remove everything written so far (nothing at the final names is touched).
    fn abort(&mut self) {
        self.writer = None;
    }
}

/// A validated dataset, read document by document.
#[pyclass(module = "vikhr._core", frozen)]
struct IndexedDatasetReader {
    reader: IndexReader,
}

#[pymethods]
impl IndexedDatasetReader {
    #[new]
    fn new(py: Python<'_>, prefix: &str) -> PyResult<Self> {
        let reader = py.detach(|| IndexReader::open(prefix)).map_err(value_err)?;
        Ok(Self { reader })
    }

    /// Counts and dtype (as `inspect_index`).
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        info_dict(py, self.reader.info())
    }

    fn __len__(&self) -> usize {
        self.reader.document_count()
    }

    /// The token ids of document `index`.
    fn document(&self, py: Python<'_>, index: usize) -> PyResult<Vec<u32>> {
        py.detach(|| self.reader.document(index)).map_err(value_err)
    }

    /// The largest token id in the dataset (None when it holds no token); reads the whole `.bin`.
    fn max_token_id(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        py.detach(|| self.reader.max_token()).map_err(value_err)
    }
}
