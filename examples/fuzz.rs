//! A fuzz harness on stable Rust: mutate the seed files in `fuzz/seeds/`
//! (safetensors, GGUF, config.json, tokenizer.json, ledger, eval journal,
//! MEMIT requests, fact datasets, parquet tables) and feed each mutant to
//! Engram's loader for it, and where it loads, one forward pass. Any error is
//! fine; a panic is a finding, saved under `fuzz/crashes/`.
//!
//! ```text
//! cargo run --release --example fuzz -- --seconds 600 [--seed N]
//! ```

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_model::transformer::Batch;
use engram_model::weights::TensorSource;
use engram_model::{Cpu, LanguageModel, Transformer};

/// xorshift64*: small, seeded, good enough to choose mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Integers that break length and count checks.
const INTERESTING: [u64; 10] = [
    0,
    1,
    2,
    3,
    0x7F,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 40,
    u64::MAX,
];

/// A byte-level mutation of `data`.
fn mutate_bytes(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..1 + rng.below(4) {
        if d.is_empty() {
            d.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(d.len());
        match rng.below(8) {
            0 => d[at] ^= 1 << rng.below(8),
            1 => d[at] = rng.next() as u8,
            2 => d.truncate(at),
            3 => {
                let n = 1 + rng.below(64);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, junk);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(d.len());
                d.drain(at..end);
            }
            5 | 6 => {
                // An interesting integer, little-endian, at an aligned offset
                // (GGUF and safetensors lengths, counts, offsets).
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let at = at / width * width;
                let bytes = v.to_le_bytes();
                let end = (at + width).min(d.len());
                d[at..end].copy_from_slice(&bytes[..end - at]);
            }
            _ => {
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = rng.below(other.len() - from).min(256);
                    d.splice(at..at, other[from..from + n].iter().copied());
                }
            }
        }
    }
    d
}

/// A structural mutation of a JSON document (or `None` when it does not parse).
fn mutate_json(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    // A JSONL journal: mutate one line.
    if text.lines().count() > 1 && serde_json::from_str::<serde_json::Value>(text).is_err() {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let i = rng.below(lines.len());
        let line = mutate_json(rng, lines[i].as_bytes())?;
        lines[i] = String::from_utf8_lossy(&line).into_owned();
        return Some((lines.join("\n") + "\n").into_bytes());
    }
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    for _ in 0..1 + rng.below(3) {
        let mut nodes = 0usize;
        count(&v, &mut nodes);
        let pick = rng.below(nodes);
        let mut i = 0usize;
        replace(&mut v, pick, &mut i, rng);
    }
    Some(v.to_string().into_bytes())
}

fn count(v: &serde_json::Value, n: &mut usize) {
    *n += 1;
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| count(x, n)),
        serde_json::Value::Object(o) => o.values().for_each(|x| count(x, n)),
        _ => {}
    }
}

fn replace(v: &mut serde_json::Value, pick: usize, i: &mut usize, rng: &mut Rng) {
    use serde_json::{json, Value};
    if *i == pick {
        *v = match rng.below(12) {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(1e12),
            3 => json!(u64::MAX),
            4 => json!(0.5),
            5 => json!(""),
            6 => json!("ünïcødé ✓ \u{0} {}"),
            7 => json!("x".repeat(1 + rng.below(5000))),
            8 => Value::Null,
            9 => json!([]),
            10 => json!({}),
            _ => json!(true),
        };
        *i += 1;
        return;
    }
    *i += 1;
    match v {
        Value::Array(a) => {
            if *i <= pick && rng.below(16) == 0 && !a.is_empty() {
                let k = rng.below(a.len());
                a.remove(k);
                return;
            }
            for x in a.iter_mut() {
                replace(x, pick, i, rng);
            }
        }
        Value::Object(o) => {
            if rng.below(16) == 0 && !o.is_empty() {
                let key = o.keys().nth(rng.below(o.len())).cloned();
                if let Some(k) = key {
                    o.remove(&k);
                }
                return;
            }
            for x in o.values_mut() {
                replace(x, pick, i, rng);
            }
        }
        _ => {}
    }
}

/// Where each kind's mutant is written and how it is loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Safetensors,
    Gguf,
    Config,
    Model,
    Tokenizer,
    Ledger,
    Journal,
    Requests,
    Facts,
    Parquet,
}

const KINDS: [(Kind, &str, &str); 10] = [
    (Kind::Safetensors, "safetensors", "model.safetensors"),
    (Kind::Gguf, "gguf", "model.gguf"),
    (Kind::Config, "config", "config.json"),
    (Kind::Model, "config", "config.json"),
    (Kind::Tokenizer, "tokenizer", "tokenizer.json"),
    (Kind::Ledger, "ledger", "ledger.json"),
    (Kind::Journal, "journal", "journal.jsonl"),
    (Kind::Requests, "requests", "requests.json"),
    (Kind::Facts, "counterfact", "facts.json"),
    (Kind::Parquet, "parquet", "table.parquet"),
];

/// What the demo model offers every target that needs a model.
struct Demo {
    dir: PathBuf,
    lm: LanguageModel<Cpu>,
    hash: String,
}

/// Feed one mutant to its loader. `Ok` or `Err` both pass; only a panic counts.
fn feed(kind: Kind, path: &Path, work: &Path, demo: &mut Demo) -> bool {
    let device = Default::default();
    let forward = |m: &Transformer<Cpu>| {
        let ids: Vec<u32> = (0..4u32.min(m.config.vocab_size as u32)).collect();
        m.logits(&Batch::single(&ids)).is_ok()
    };
    match kind {
        Kind::Safetensors => {
            let Ok(ckpt) = engram_model::weights::SafetensorsCheckpoint::open(path) else {
                return false;
            };
            for (name, _) in ckpt.tensor_shapes() {
                let _ = ckpt.tensor(&name);
            }
            true
        }
        Kind::Gguf => {
            let Ok(file) = engram_model::gguf::GgufFile::open(path) else {
                return false;
            };
            let _ = file.config();
            for name in file.order.clone() {
                let _ = file.dequantize(&name);
            }
            match Transformer::<Cpu>::from_gguf(path, &device) {
                Ok(m) => forward(&m),
                Err(_) => false,
            }
        }
        Kind::Config => engram_model::ModelConfig::from_json_str(
            &String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()),
            path,
        )
        .is_ok(),
        Kind::Model => {
            // The demo weights with a mutated config beside them.
            for f in ["model.safetensors", "tokenizer.json"] {
                let _ = std::fs::copy(demo.dir.join(f), work.join(f));
            }
            match LanguageModel::<Cpu>::load(work, &device) {
                Ok(lm) => lm.top_k("Quinford Belvale lives in the city of", 5).is_ok(),
                Err(_) => false,
            }
        }
        Kind::Tokenizer => {
            let Ok(t) = engram_model::Tokenizer::from_file(path) else {
                return false;
            };
            for s in [
                "Quinford Belvale lives in the city of",
                "",
                " ",
                "ü ✓ \u{0}",
            ] {
                let _ = t.encode(s);
                let _ = t.subject_span(s, "Belvale");
            }
            let n = t.vocab_size() as u32;
            let _ = t.decode(&(0..n.min(64) + 5).collect::<Vec<_>>());
            for id in [0, n.saturating_sub(1), n, n + 1, u32::MAX] {
                let _ = t.token_text(id);
            }
            let _ = t.unk_id();
            true
        }
        Kind::Ledger => {
            let ok = engram_editing::Ledger::<Cpu>::import(path, &mut demo.lm.model, &demo.hash)
                .map(|mut l| l.revert_all(&mut demo.lm.model))
                .is_ok();
            ok && demo.lm.top_k("Quinford Belvale lives in", 1).is_ok()
        }
        Kind::Journal => engram_editing::jobs::evaluate::read_journal(path).is_ok(),
        Kind::Requests => engram_editing::jobs::setup::load_requests(path)
            .map(|r| engram_editing::memit::check_batch(&demo.lm, &r).is_ok())
            .unwrap_or(false),
        Kind::Facts => {
            use engram_datasets::{facts, OnBadRecord};
            let mut ok = false;
            for on_bad in [OnBadRecord::Fail, OnBadRecord::Skip] {
                ok |= facts::load_counterfact(path, on_bad).is_ok();
                ok |= facts::load_known(path, on_bad).is_ok();
                ok |= facts::load_zsre(path, on_bad).is_ok();
                ok |= facts::load_fact_set(path, on_bad).is_ok();
            }
            ok
        }
        Kind::Parquet => engram_datasets::store::read_parquet(path)
            .map(|df| {
                let _ = engram_datasets::summary::summarize(&df, &[]);
            })
            .is_ok(),
    }
}

fn seeds(root: &Path, folder: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(root.join(folder))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| Some((p.clone(), std::fs::read(&p).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[derive(Default, Clone, Copy)]
struct Tally {
    tried: usize,
    loaded: usize,
    panics: usize,
}

fn main() -> std::process::ExitCode {
    let mut seconds = 60u64;
    let mut seed = 0x5EED_u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--seconds", Some(v)) => seconds = v,
            ("--seed", Some(v)) => seed = v.max(1),
            _ => {
                eprintln!("usage: fuzz [--seconds N] [--seed N]");
                return std::process::ExitCode::from(2);
            }
        }
        i += 2;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = repo.join("fuzz/seeds");
    let crashes = repo.join("fuzz/crashes");
    let work = std::env::temp_dir().join(format!("engram-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");

    // The demo model, written out once, for the targets that need a model.
    let dir = work.join("demo");
    std::fs::create_dir_all(&dir).expect("demo dir");
    for (name, bytes) in engram_model::source::DEMO_FILES {
        std::fs::write(dir.join(name), bytes).expect("demo file");
    }
    let lm = LanguageModel::<Cpu>::load(&dir, &Default::default()).expect("the demo model loads");
    let hash = engram_model::source::model_hash(&dir).expect("hash");
    let mut demo = Demo { dir, lm, hash };

    // Panics are caught and tallied; the hook keeps the message and place.
    let last = Arc::new(Mutex::new(String::new()));
    let seen = last.clone();
    panic::set_hook(Box::new(move |info| {
        if let Ok(mut s) = seen.lock() {
            *s = info.to_string();
        }
    }));

    let all_seeds: Vec<Vec<(PathBuf, Vec<u8>)>> = KINDS
        .iter()
        .map(|(_, folder, _)| seeds(&root, folder))
        .collect();
    let mut tally = [Tally::default(); KINDS.len()];
    let mut found: Vec<String> = Vec::new();
    let mut rng = Rng(seed);
    let start = Instant::now();
    let deadline = Duration::from_secs(seconds);
    let mut n = 0usize;
    while start.elapsed() < deadline {
        // The forward-pass targets are slower; they get fewer turns.
        let k = loop {
            let k = rng.below(KINDS.len());
            let slow = matches!(KINDS[k].0, Kind::Model | Kind::Gguf | Kind::Ledger);
            if !slow || rng.below(3) == 0 {
                break k;
            }
        };
        let (kind, _, file) = KINDS[k];
        let pool = &all_seeds[k];
        if pool.is_empty() {
            continue;
        }
        let (_, base) = &pool[rng.below(pool.len())];
        let (_, other) = &all_seeds[rng.below(all_seeds.len())]
            .first()
            .cloned()
            .unwrap_or_default();
        let mutant = match rng.below(3) {
            0 => mutate_json(&mut rng, base).unwrap_or_else(|| mutate_bytes(&mut rng, base, other)),
            _ => mutate_bytes(&mut rng, base, other),
        };
        if mutant.len() > 4 << 20 {
            continue;
        }
        let dir = work.join(format!("{kind:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("target dir");
        let path = dir.join(file);
        std::fs::write(&path, &mutant).expect("mutant");
        if kind == Kind::Parquet {
            // A table as the run store wrote it, corrupted on disk later: its
            // checksum is the seed's. (polars' decoder can abort the process
            // on a corrupt page, so the store checks before decoding.)
            let sum = engram_datasets::store::checksum_path(&path);
            std::fs::write(sum, engram_datasets::store::checksum_line(base)).expect("sum");
        }
        n += 1;
        tally[k].tried += 1;
        match panic::catch_unwind(AssertUnwindSafe(|| feed(kind, &path, &dir, &mut demo))) {
            Ok(true) => tally[k].loaded += 1,
            Ok(false) => {}
            Err(_) => {
                tally[k].panics += 1;
                let msg = last.lock().map(|s| s.clone()).unwrap_or_default();
                let _ = std::fs::create_dir_all(&crashes);
                let ext = Path::new(file)
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("bin");
                let saved = crashes.join(format!("{kind:?}-{}.{ext}", tally[k].panics));
                let _ = std::fs::write(&saved, &mutant);
                if found.iter().all(|f| !f.contains(&msg)) {
                    eprintln!("PANIC ({kind:?}, saved as {}): {msg}", saved.display());
                }
                found.push(msg);
                // A ledger may have left the demo half-edited: load it again.
                if let Ok(lm) = LanguageModel::<Cpu>::load(&demo.dir, &Default::default()) {
                    demo.lm = lm;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "{:<12} {:>8} {:>8} {:>7}",
        "target", "inputs", "loaded", "panics"
    );
    for (k, (kind, _, _)) in KINDS.iter().enumerate() {
        let t = tally[k];
        println!(
            "{:<12} {:>8} {:>8} {:>7}",
            format!("{kind:?}").to_lowercase(),
            t.tried,
            t.loaded,
            t.panics
        );
    }
    let panics: usize = tally.iter().map(|t| t.panics).sum();
    println!(
        "{n} inputs in {:.0} s (seed {seed}), {panics} panics",
        start.elapsed().as_secs_f64()
    );
    if panics > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
