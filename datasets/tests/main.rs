//! Tests of the loaders, the run store and the figures, in one binary.
//! Tests that need `../shared` are #[ignore]d (run them with --include-ignored where it exists).

mod figures;
mod loaders;
mod store;

use std::path::PathBuf;

pub fn shared(what: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP {what}: ../shared is absent");
        None
    }
}

pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("engram-ds-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}
