//! The example apps of this repository (`examples/`), built to Wasm on first use: what
//! `turnstile demo`, `turnstile bench` and the tests run. Only useful inside a checkout.

use crate::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The Wasm target of plain modules.
pub const PLAIN: &str = "wasm32-unknown-unknown";
/// The Wasm target of WASI preview 1 modules.
pub const WASIP1: &str = "wasm32-wasip1";

/// The repository root (the crate is `host/` inside it).
pub fn repository_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

/// The bytes of example `name` (`ivr_menu`, `order_bot`, `hostile`) built for `target` in
/// release mode. The examples are built, all together, the first time one is asked for in this
/// process (cargo makes that a no-op when nothing changed).
pub fn example_wasm(name: &str, target: &str) -> Result<Vec<u8>, Error> {
    let dir = built(target)?;
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn built(target: &str) -> Result<PathBuf, Error> {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, dir)) = built.iter().find(|(t, _)| t == target) {
        return Ok(dir.clone());
    }
    let root = repository_root();
    // A target directory of their own, so this never waits on the lock of a build in progress.
    let target_dir = root.join("target").join("guest");
    // rustup does not add rust-toolchain.toml's targets to a toolchain already installed: ask
    // for the target (a no-op when it is there; skipped where there is no rustup).
    let _ = Command::new("rustup")
        .current_dir(&root)
        .args(["target", "add", target])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    eprintln!("building the example apps for {target} (the first run takes a few minutes)...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "--release", "--target", target])
        .args(["-p", "ivr-menu", "-p", "order-bot", "-p", "hostile", "--target-dir"])
        .arg(&target_dir)
        .status()
        .map_err(|e| Error::io("running cargo to build the example apps", e))?;
    if !status.success() {
        return Err(Error::io(
            format!("building the example apps for {target} failed ({status})"),
            std::io::Error::other("cargo build failed"),
        ));
    }
    let dir = target_dir.join(target).join("release");
    built.push((target.to_owned(), dir.clone()));
    Ok(dir)
}
