//! The Engram workbench: an egui desktop app over the Engram crates.
//!
//! - [`worker`]: one thread owns the model and device; panels send typed
//!   [`worker::Command`]s and get typed [`worker::Reply`]s, progress and Cancel.
//! - [`session`]: the model side, generic over the burn backend; [`editor`]: its ROME edits.
//! - [`app`]: the shell (prompt bar, panel list, status bar); [`panels`]: one file each.
//! - [`settings`]: last model, prompt and panel, kept between launches.

pub mod app;
pub mod editor;
pub mod error;
pub mod memories;
pub mod panels;
pub mod session;
pub mod settings;
pub mod widgets;
pub mod worker;

pub use app::{AppOptions, EngramApp};
pub use settings::PanelKind;
