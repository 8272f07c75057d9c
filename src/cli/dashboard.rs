//! `stratus dashboard PATH`: the URL of a running mount's web dashboard, asked of the mount.

use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::bail;
use serde_json::json;

use super::{mounts, Out};
use crate::control;

pub(super) fn run(path: &Path, out: Out) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    let url = match control::get(&t.root, control::DASHBOARD) {
        Ok(u) => String::from_utf8_lossy(&u).into_owned(),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => bail!(
            "{} has no dashboard: it was mounted without --dashboard",
            t.root.display()
        ),
        Err(e) => return Err(e.into()),
    };
    out.print(json!({"mount": t.root, "url": url}), || url.clone());
    if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some() {
        // Best effort: the URL is printed either way.
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
    Ok(ExitCode::SUCCESS)
}
