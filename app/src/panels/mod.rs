//! One file per panel. Each reads the app's state, draws, and turns clicks into
//! worker commands through [`crate::app::EngramApp::submit`].

pub mod attention;
pub mod edit;
pub mod facts;
pub mod lens;
pub mod locate;
pub mod memories;
pub mod model;
pub mod playground;
pub mod probe;
pub mod runs;
