//! Throughput of the SentencePiece encoder on a JSONL file (REPEATS runs, default 3):
//! `cargo run --release --example encode_speed MODEL FILE.jsonl[.gz] [REPEATS]`.
use std::time::Instant;
use vikhr_core::jsonl::{extract_fields, open_input, LineBatcher};
use vikhr_core::spm::{EncodeState, SpmModel};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = SpmModel::from_file(args[1].as_ref()).unwrap();
    let mut batcher = LineBatcher::new(
        open_input(args[2].as_ref(), Default::default()).unwrap(),
        0,
        1 << 30,
    );
    let batch = batcher.next_batch().unwrap().unwrap();
    let keys = vec!["text".to_string()];
    let texts: Vec<String> = batch
        .lines()
        .map(|l| extract_fields(l, &keys).unwrap()[0].to_string())
        .collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let repeats: usize = args.get(3).map_or(3, |r| r.parse().unwrap());
    for _ in 0..repeats {
        let mut state = EncodeState::default();
        let t = Instant::now();
        let mut n = 0;
        let mut out = Vec::new();
        for text in &texts {
            out.clear();
            model.encode_into(text, &mut state, &mut out);
            n += out.len();
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{} MB in {s:.3}s: {:.1} MB/s, {n} tokens",
            bytes / 1_000_000,
            bytes as f64 / s / 1e6
        );
    }
}
