//! `engram completions SHELL`: the shell completion script, from the same
//! clap definition the parser uses (clap_complete).

use super::prelude::*;

#[derive(Args)]
pub(crate) struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub(crate) fn run(a: CompletionsArgs, mut command: clap::Command) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut command, "engram", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(())
}
