//! `ferrotune ui`: the local web page (`ferrotune_ui`), serving the folder it is given.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ferrotune_ui::{Ui, UiOptions};

#[derive(Debug, Args)]
pub struct UiArgs {
    /// Port to listen on; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 7860)]
    port: u16,
    /// Address to listen on. The default, 127.0.0.1, is this machine only; any other
    /// address makes every request need the token printed at start.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The folder the page works in: its file pickers start here and cannot leave it,
    /// runs and exports are written under it, and `.ferrotune-ui/` keeps the page's jobs.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub fn run(a: UiArgs) -> Result<()> {
    let exe = std::env::current_exe().context("the path of this ferrotune binary")?;
    // Relative paths the page shows (and those saved in its runs' outputs, such as an
    // adapter's base) are relative to the served folder, for the commands it runs and
    // for the models it loads itself.
    std::env::set_current_dir(&a.dir).with_context(|| format!("--dir {}", a.dir.display()))?;
    let ui = Ui::bind(UiOptions {
        dir: PathBuf::from("."),
        host: a.host,
        port: a.port,
        exe,
    })?;
    let addr = ui.addr();
    match ui.token() {
        Some(token) => println!(
            "ferrotune ui on http://{addr}/?token={token} (every request needs this token)"
        ),
        None => println!("ferrotune ui on http://{addr}/"),
    }
    std::io::stdout().flush()?;
    ui.run();
    Ok(())
}
