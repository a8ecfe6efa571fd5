//! The README is the front door: what it says about the ABI must be what the host does, and every
//! command it shows is run by a test.

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

/// Every command the README's `sh` blocks show (a part of its line), and the test that runs it
/// as the README shows it (the test's own ports, directories and file names aside).
const COMMANDS_RUN_BY: &[(&str, &str)] = &[
    ("-- demo", "cli::the_demo_splits_its_rush_hour_by_weight_and_says_so"),
    ("cargo test --workspace", "CI (.ci/run runs it)"),
    ("-- new hello-line", "cli::new_makes_a_script_whose_test_passes_and_whose_module_answers_a_call"),
    ("cd /tmp/hello-line && cargo test", "cli::new_makes_a_script_whose_test_passes_and_whose_module_answers_a_call"),
    ("cargo build -p ivr-menu", "the fixtures (examples.rs builds every example app so)"),
    ("-- inspect", "cli::inspect_lists_actions_imports_and_memory_or_the_refusal"),
    ("-- run target", "cli::run_walks_a_session_from_stdin_and_reuses_compiled_code_in_a_new_process"),
    ("TURNSTILE_ADMIN_TOKEN=$(head", "serve::the_example_configuration_serves_with_its_relative_data_directory"),
    (
        "serve --config turnstile.example.toml",
        "serve::the_example_configuration_serves_with_its_relative_data_directory",
    ),
    ("export TURNSTILE_URL", "serve::the_client_takes_a_script_from_nothing_to_an_answered_call"),
    ("tenants --create", "serve::the_client_takes_a_script_from_nothing_to_an_answered_call"),
    ("turnstile token", "serve::the_client_takes_a_script_from_nothing_to_an_answered_call"),
    ("turnstile deploy", "serve::the_client_takes_a_script_from_nothing_to_an_answered_call"),
    ("turnstile start", "serve::the_client_takes_a_script_from_nothing_to_an_answered_call"),
    ("turnstile tail", "serve::the_client_takes_a_script_from_nothing_to_an_answered_call"),
    ("cargo build -p order-bot", "the fixtures (examples.rs builds every example app so)"),
    ("-- drive", "crash::sessions_survive_sigkill_with_every_event_applied_once_and_every_output_released_once"),
    ("session export", "durability::a_session_exported_from_one_host_resumes_on_another"),
    ("session import", "durability::a_session_exported_from_one_host_resumes_on_another"),
    ("turnstile backup", "operations::a_backup_taken_under_load_resumes_every_session_of_its_moment"),
    ("export TURNSTILE_ADMIN_TOKEN", "nodes::a_standby_server_takes_over_the_calls_of_a_killed_one"),
    ("serve --listen 127.0.0.1:808", "nodes::a_standby_server_takes_over_the_calls_of_a_killed_one"),
    ("cluster status", "nodes::a_standby_server_takes_over_the_calls_of_a_killed_one"),
];

#[test]
fn every_command_the_readme_shows_is_run_by_a_test() {
    let readme = readme();
    let tests_dir = turnstile::examples::repository_root().join("tests/all");
    let mut commands = Vec::new();
    let (mut in_block, mut heredoc) = (false, None::<String>);
    for line in readme.lines() {
        match (in_block, line.trim_start()) {
            (false, "```sh") => in_block = true,
            (false, _) => {}
            (true, "```") => in_block = false,
            (true, text) => {
                if let Some(end) = &heredoc {
                    // The lines of a here-document are its command's input, not commands.
                    if text == end {
                        heredoc = None;
                    }
                } else if !text.is_empty() && !text.starts_with('#') {
                    heredoc = text.split_once("<<'").map(|(_, rest)| rest.trim_end_matches('\'').to_owned());
                    commands.push(text.to_owned());
                }
            }
        }
    }
    assert!(commands.len() >= 20, "the README's commands were not found: {commands:?}");
    for command in &commands {
        let (_, test) = COMMANDS_RUN_BY.iter().find(|(part, _)| command.contains(part)).unwrap_or_else(|| {
            panic!("no test is named for the README's command `{command}`: add one to COMMANDS_RUN_BY")
        });
        // A named test must exist (the others say who runs the command instead).
        if let Some((module, name)) = test.split_once("::") {
            let source = std::fs::read_to_string(tests_dir.join(format!("{module}.rs"))).expect("the test's module");
            assert!(source.contains(&format!("fn {name}(")), "`{command}`: the test {test} does not exist");
        }
    }
}
