//! What the workbench remembers between launches: the last model, prompt and
//! panel, and the display choices. A small JSON file, written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::session::GenParams;

/// The panels of the workbench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PanelKind {
    Model,
    #[default]
    Playground,
    Lens,
    Attention,
    Facts,
    Locate,
    Memories,
    Probe,
    Edit,
    Runs,
}

impl PanelKind {
    pub const ALL: [PanelKind; 10] = [
        PanelKind::Model,
        PanelKind::Playground,
        PanelKind::Lens,
        PanelKind::Attention,
        PanelKind::Facts,
        PanelKind::Locate,
        PanelKind::Memories,
        PanelKind::Probe,
        PanelKind::Edit,
        PanelKind::Runs,
    ];

    pub fn title(self) -> &'static str {
        match self {
            PanelKind::Model => "Model",
            PanelKind::Playground => "Playground",
            PanelKind::Lens => "Logit lens",
            PanelKind::Attention => "Attention",
            PanelKind::Facts => "Facts",
            PanelKind::Locate => "Locate",
            PanelKind::Memories => "Memories",
            PanelKind::Probe => "Probe",
            PanelKind::Edit => "Edit",
            PanelKind::Runs => "Runs",
        }
    }

    /// The name used on the command line (`--panel lens`).
    pub fn key(self) -> &'static str {
        match self {
            PanelKind::Model => "model",
            PanelKind::Playground => "playground",
            PanelKind::Lens => "lens",
            PanelKind::Attention => "attention",
            PanelKind::Facts => "facts",
            PanelKind::Locate => "locate",
            PanelKind::Memories => "memories",
            PanelKind::Probe => "probe",
            PanelKind::Edit => "edit",
            PanelKind::Runs => "runs",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.key() == key)
    }
}

/// Which residual stream the lens reads (mirrors `LensSite`, but serialisable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LensSiteChoice {
    Pre,
    Mid,
    #[default]
    Post,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Path, `.gguf`, hub id, or `demo`.
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub prompt: String,
    pub panel: PanelKind,
    pub dark: bool,
    pub top_k: usize,
    pub generation: GenParams,
    pub lens_site: LensSiteChoice,
    pub facts_path: String,
    pub facts_limit: usize,
    pub trace: crate::session::TraceRequest,
    pub edit: crate::editor::EditSettings,
    pub memories: MemoriesSettings,
    pub probe: ProbeSettings,
    pub steer: SteerSettings,
}

/// The Playground's Steer form: a contrastive vector at one layer's residual.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SteerSettings {
    /// One prompt per line.
    pub positive: String,
    pub negative: String,
    /// Added at `blocks.{layer}.hook_resid_pre`.
    pub layer: usize,
    pub coef: f32,
    pub tokens: usize,
}

impl Default for SteerSettings {
    fn default() -> Self {
        Self {
            positive: "Quinford Belvale lives in the city of".into(),
            negative: "Quinford Salin speaks the language".into(),
            layer: 1,
            coef: 2.0,
            tokens: 8,
        }
    }
}

/// The Probe panel's form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeSettings {
    /// Labelled prompts (JSON array or JSON lines).
    pub data: String,
    pub label: String,
    pub text: String,
    /// Subject field (groups the folds; `subject` position); empty: none.
    pub subject: String,
    pub hook: String,
    /// `last` or `subject`.
    pub position: String,
    pub control: bool,
    pub min_count: usize,
}

/// The Probe panel's name for the demo relation set compiled into the binary.
pub const DEMO_PROBE_DATA: &str = "demo";

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            data: DEMO_PROBE_DATA.into(),
            label: "relation".into(),
            text: "prompt".into(),
            subject: "subject".into(),
            hook: "resid_post".into(),
            position: "subject".into(),
            control: true,
            min_count: 30,
        }
    }
}

/// The Memories panel's choices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoriesSettings {
    pub per_layer: usize,
    /// Text file searched for trigger examples; empty: the demo corpus file.
    pub corpus: String,
    pub max_tokens: usize,
    /// Greedy continuation length, with and without the interventions (0: none).
    pub continuation: usize,
}

impl Default for MemoriesSettings {
    fn default() -> Self {
        Self {
            per_layer: 5,
            corpus: String::new(),
            max_tokens: 50_000,
            continuation: 8,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: "demo".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            prompt: "Quinford Belvale lives in the city of".into(),
            panel: PanelKind::Playground,
            dark: true,
            top_k: 10,
            generation: GenParams::default(),
            lens_site: LensSiteChoice::Post,
            facts_path: String::new(),
            facts_limit: 200,
            trace: crate::session::TraceRequest::default(),
            edit: crate::editor::EditSettings::default(),
            memories: MemoriesSettings::default(),
            probe: ProbeSettings::default(),
            steer: SteerSettings::default(),
        }
    }
}

/// Where settings live: `$ENGRAM_CONFIG_DIR`, else `$XDG_CONFIG_HOME/engram`,
/// else `~/.config/engram`.
pub fn default_path() -> Option<PathBuf> {
    let dir = std::env::var_os("ENGRAM_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| Path::new(&d).join("engram")))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/engram")))?;
    Some(dir.join("app.json"))
}

impl Settings {
    /// Read `path`; a missing file gives the defaults, a damaged one gives the
    /// defaults and the reason (the file is left as it is).
    pub fn load(path: &Path) -> (Self, Option<String>) {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str(&text) {
                Ok(s) => (s, None),
                Err(e) => (
                    Self::default(),
                    Some(format!(
                        "{}: unreadable settings ({e}); using defaults",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::default(), None),
            Err(e) => (
                Self::default(),
                Some(format!("{}: {e}; using defaults", path.display())),
            ),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        engram_datasets::store::write_atomic(path, text.as_bytes()).map_err(|e| e.to_string())
    }
}
