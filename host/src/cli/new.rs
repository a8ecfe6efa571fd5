//! `turnstile new NAME`: a script project to start from — Cargo.toml with the SDK, a phone-line
//! skeleton, a unit test on the SDK's test host, a README with the commands.

use anyhow::{Context, Result, bail};
use std::path::Path;

const CARGO_TOML: &str = include_str!("new/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("new/lib.rs.tmpl");
const README: &str = include_str!("new/README.md.tmpl");

/// Creates the project `name` in `parent`.
pub(crate) fn new(parent: &Path, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!("`{name}` can't name a script: use a-z, 0-9, `-` and `_`, starting with a letter");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} exists already: choose another name or directory", dir.display());
    }
    let sdk = turnstile::examples::repository_root().join("guest-sdk");
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("creating {}", dir.display()))?;
    for (path, text) in
        [("Cargo.toml", CARGO_TOML), ("src/lib.rs", LIB_RS), ("README.md", README), (".gitignore", "/target\n")]
    {
        std::fs::write(dir.join(path), fill(text)).with_context(|| format!("writing {path}"))?;
    }
    println!("created {}: cd there, then `cargo test` and see its README", dir.display());
    Ok(())
}
