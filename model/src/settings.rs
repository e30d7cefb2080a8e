//! Where Engram keeps things: the run store, the statistics and activation
//! caches, the unpacked demo model, and whether the hub may be asked. The
//! front ends fill one [`Settings`] (from the environment or their own
//! preferences); the library crates read none of it from the environment.

use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The run store (`ENGRAM_RUNS`, else `./runs`).
    pub runs: PathBuf,
    /// Layer statistics (`ENGRAM_STATS_DIR`, else `<cache>/stats`).
    pub stats: PathBuf,
    /// Probe activations (`ENGRAM_ACTS_DIR`, else `activations` beside `stats`).
    pub activations: PathBuf,
    /// Engram's cache (`$XDG_CACHE_HOME/engram`, else `~/.cache/engram`).
    pub cache: PathBuf,
    /// Never ask the Hugging Face hub (`HF_HUB_OFFLINE` set and not `0`).
    pub hub_offline: bool,
}

impl Settings {
    /// Everything under one directory (tests, a workbench session).
    pub fn under(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self {
            runs: root.join("runs"),
            stats: root.join("stats"),
            activations: root.join("activations"),
            cache: root.join("cache"),
            hub_offline: true,
        }
    }

    /// Settings from variables looked up by `var` (a front end passes
    /// `|k| std::env::var_os(k)`), with the defaults above.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let cache = var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("engram");
        let stats = var("ENGRAM_STATS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join("stats"));
        Self {
            runs: var("ENGRAM_RUNS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("runs")),
            activations: var("ENGRAM_ACTS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| stats.with_file_name("activations")),
            stats,
            hub_offline: var("HF_HUB_OFFLINE").is_some_and(|v| v != "0"),
            cache,
        }
    }
}
