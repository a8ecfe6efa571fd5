//! The README is the front door: what it says about the ABI must be what the host does.

/// The README's text.
fn readme() -> String {
    let path = turnstile::examples::repository_root().join("README.md");
    std::fs::read_to_string(path).expect("README.md")
}

#[test]
fn the_readme_gives_every_import_its_charge() {
    let readme = readme();
    for charge in turnstile::CHARGES {
        let (_, names) = charge.import.split_once("::").expect("module::names");
        let row = format!("| {} | {} |", charge.base, charge.per_kib);
        let line = readme
            .lines()
            .find(|line| line.contains(&row) && names.split(", ").all(|name| line.contains(&format!("`{name}"))))
            .unwrap_or_else(|| panic!("the README's charge table has no row `{row}` naming {names}"));
        assert!(line.starts_with('|'), "{line}");
    }
}
