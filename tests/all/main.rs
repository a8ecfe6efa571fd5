//! Turnstile's integration tests: one binary, shared fixtures (the examples are built to Wasm once
//! per run), WAT modules inline where a Rust guest can't express the case.

mod api;
mod browser;
mod cli;
mod cluster;
mod compiling;
mod console;
mod containment;
mod crash;
mod deploy;
mod durability;
mod failover;
mod fixtures;
mod flows;
mod hardening;
mod host;
mod nodes;
mod operations;
mod outage;
mod quotas;
mod readme;
mod sandbox;
mod schema_fuzz;
mod serve;
mod store;
