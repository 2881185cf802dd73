//! `vikhr._core`: a thin PyO3 skin over `vikhr-core`. No logic lives here.

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", vikhr_core::VERSION)?;
    m.add_function(wrap_pyfunction!(default_threads, m)?)?;
    Ok(())
}

/// Number of worker threads used when a caller passes `threads=0`.
#[pyfunction]
fn default_threads() -> usize {
    vikhr_core::default_threads()
}
