//! vikhr's native core. The logic lives here and is tested with `cargo test`;
//! `rust/py` is a thin PyO3 skin over it.

pub mod byte_bpe;
pub mod chunk_cache;
pub mod jsonl;
pub mod mmidx;
mod pair_table;
pub mod pipeline;
pub mod proto;
pub mod spm;
pub mod tokenizer;

/// Version of the native core, reported by `vikhr doctor`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Number of worker threads to use when the caller asks for "all of them".
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_semver() {
        let parts: Vec<&str> = VERSION.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()));
    }

    #[test]
    fn default_threads_is_positive() {
        assert!(default_threads() >= 1);
    }
}
