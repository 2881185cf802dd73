//! `vikhr._core`: a thin PyO3 skin over `vikhr-core`. No logic lives here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use vikhr_core::mmidx::{self, DType, IndexInfo, IndexedWriter};
use vikhr_core::pipeline::{self, Job, PipelineError, Progress};
use vikhr_core::spm::{EncodeState, SpmModel};
use vikhr_core::tokenizer::Tokenizer;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", vikhr_core::VERSION)?;
    m.add_function(wrap_pyfunction!(default_threads, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_index, m)?)?;
    m.add_function(wrap_pyfunction!(merge_datasets, m)?)?;
    m.add_function(wrap_pyfunction!(write_indexed_dataset, m)?)?;
    m.add_class::<SentencePieceEncoder>()?;
    Ok(())
}

/// Number of worker threads used when a caller passes `threads=0`.
#[pyfunction]
fn default_threads() -> usize {
    vikhr_core::default_threads()
}

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A SentencePiece BPE model encoded by vikhr's exact Rust encoder.
#[pyclass(module = "vikhr._core", frozen)]
struct SentencePieceEncoder {
    model: SpmModel,
}

#[pymethods]
impl SentencePieceEncoder {
    #[new]
    fn new(path: PathBuf) -> PyResult<Self> {
        SpmModel::from_file(&path)
            .map(|model| Self { model })
            .map_err(value_err)
    }

    /// The ids of `text` (no BOS/EOS), as `sentencepiece`'s `encode(text)`.
    fn encode(&self, py: Python<'_>, text: &str) -> Vec<u32> {
        py.detach(|| self.model.encode(text))
    }

    /// The ids of each text.
    fn encode_batch(&self, py: Python<'_>, texts: Vec<String>) -> Vec<Vec<u32>> {
        py.detach(|| {
            let mut state = EncodeState::default();
            texts
                .iter()
                .map(|t| {
                    let mut out = Vec::new();
                    self.model.encode_into(t, &mut state, &mut out);
                    out
                })
                .collect()
        })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.model.bos_id
    }

    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.model.eos_id
    }
}

fn load_tokenizer(
    kind: &str,
    path: &std::path::Path,
    add_special_tokens: bool,
) -> PyResult<Tokenizer> {
    match kind {
        "sentencepiece" => Tokenizer::sentencepiece(path).map_err(value_err),
        "huggingface" => Tokenizer::huggingface(path, add_special_tokens).map_err(value_err),
        _ => Err(value_err(format!("unknown tokenizer kind {kind:?}"))),
    }
}

/// Tokenize JSONL `inputs` into `{output_prefix}_{key}_document.bin/.idx`; returns a summary dict.
/// `progress(documents, bytes, tokens, skipped)` is called about every 0.2 s.
#[pyfunction]
#[pyo3(signature = (inputs, output_prefix, json_keys, tokenizer_kind, tokenizer_path, *, append_eod=false,
    eod_id=None, prepend_bos=false, add_special_tokens=false, threads=0, skip_invalid=false,
    batch_bytes=1<<20, progress=None))]
#[allow(clippy::too_many_arguments)]
fn preprocess<'py>(
    py: Python<'py>,
    inputs: Vec<PathBuf>,
    output_prefix: String,
    json_keys: Vec<String>,
    tokenizer_kind: &str,
    tokenizer_path: PathBuf,
    append_eod: bool,
    eod_id: Option<u32>,
    prepend_bos: bool,
    add_special_tokens: bool,
    threads: usize,
    skip_invalid: bool,
    batch_bytes: usize,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let tok = load_tokenizer(tokenizer_kind, &tokenizer_path, add_special_tokens)?;
    let append_eod = if append_eod {
        Some(eod_id.or(tok.eos_id()).ok_or_else(|| {
            value_err("--append-eod: the tokenizer has no EOS token; give the EOD id explicitly")
        })?)
    } else {
        None
    };
    let prepend_bos = if prepend_bos {
        Some(
            tok.bos_id()
                .ok_or_else(|| value_err("the tokenizer has no BOS token to prepend"))?,
        )
    } else {
        None
    };
    let job = Job {
        inputs,
        output_prefix,
        json_keys,
        append_eod,
        prepend_bos,
        threads: if threads == 0 {
            vikhr_core::default_threads()
        } else {
            threads
        },
        skip_invalid,
        batch_bytes,
        dtype: None,
    };
    let counters = Progress::default();
    let finished = AtomicBool::new(false);
    let report = |cb: &Bound<'py, PyAny>| -> PyResult<()> {
        cb.call1((
            counters.documents.load(Ordering::Relaxed),
            counters.bytes.load(Ordering::Relaxed),
            counters.tokens.load(Ordering::Relaxed),
            counters.skipped.load(Ordering::Relaxed),
        ))
        .map(|_| ())
    };
    let (result, interrupted) = std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let r = pipeline::run(&job, &tok, &counters);
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
            let step = py.check_signals().and_then(|_| match &progress {
                Some(cb) if interrupted.is_none() => report(cb),
                _ => Ok(()),
            });
            if let Err(e) = step {
                counters.cancel.store(true, Ordering::Relaxed);
                interrupted.get_or_insert(e);
            }
        }
        (
            handle.join().expect("preprocess thread panicked"),
            interrupted,
        )
    });
    if let Some(e) = interrupted {
        return Err(e);
    }
    if let Some(cb) = &progress {
        report(cb)?;
    }
    let summary = result.map_err(|e| match e {
        PipelineError::Cancelled => PyKeyboardInterrupt::new_err("cancelled"),
        PipelineError::Io(m) => PyOSError::new_err(m),
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
    let info = py
        .detach(|| mmidx::merge(&prefixes, output_prefix))
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
    info_dict(py, &info)
}

/// Write documents of token ids as `{prefix}.bin/.idx` (one sequence per non-empty document).
#[pyfunction]
fn write_indexed_dataset(
    prefix: &str,
    documents: Vec<Vec<u32>>,
    vocab_size: usize,
) -> PyResult<()> {
    let io = |e: std::io::Error| PyOSError::new_err(e.to_string());
    let mut w = IndexedWriter::create(prefix, DType::optimal(vocab_size)).map_err(io)?;
    for d in &documents {
        let lens = [d.len() as u64];
        w.add_document(d, if d.is_empty() { &[] } else { &lens })
            .map_err(io)?;
    }
    w.finish().map_err(io)
}
