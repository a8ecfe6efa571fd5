//! `turnstile serve`: the HTTP API on a data directory, configured by a TOML file that flags and
//! environment variables override (see `turnstile.example.toml`). SIGTERM or SIGINT: stop taking
//! requests, let the actions in flight finish and their checkpoints commit, exit 0.

use anyhow::{Context, Result, bail};
use std::process::ExitCode;
use std::sync::Arc;
use turnstile::api::{self, Api, Standby, router};
use turnstile::config::ServeConfig;
use turnstile::{
    ClaimPolicy, EngineConfig, Error, Host, HostConfig, LeaseRow, PgStore, RuntimeConfig, Store, open_store,
};

pub(crate) fn serve(config: ServeConfig) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let Some(admin_token) = config.admin_token.clone().filter(|t| t.len() >= 16) else {
        bail!(
            "set an admin token of at least 16 characters (TURNSTILE_ADMIN_TOKEN or `admin_token` in the configuration)"
        );
    };
    // Bound first: a standby answers (and forwards) while it waits for the shards.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = std::net::TcpListener::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let listening = listener.local_addr()?;
    // The port actually bound (the configuration may ask for port 0): tests read this line.
    println!("listening on http://{listening}");
    // A stop asked for (SIGTERM, SIGINT) at any point is seen once: before the API is up it ends
    // the start at once, giving the shards up if they were claimed (a standby takes over now,
    // not when the leases run out); after, it stops the API gracefully.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let claimed: Arc<std::sync::OnceLock<Arc<PgStore>>> = Arc::default();
    let stopped_while_starting = runtime.spawn({
        let (mut stopping, claimed) = (stopping.clone(), claimed.clone());
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            eprintln!("stopped while starting: exiting");
            if let Some(store) = claimed.get().cloned() {
                let _ = tokio::task::spawn_blocking(move || store.release_claim()).await;
            }
            std::process::exit(0);
        }
    });
    let url = config.store_url();
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let cluster = if postgres {
        let store = Arc::new(PgStore::open(&url)?);
        let _ = claimed.set(store.clone());
        let policy = config.cluster.policy(listening)?;
        wait_for_the_shards(&runtime, &listener, &config, &store, &policy)?;
        eprintln!("node {} holds all {} shards", policy.node, store.shard_count());
        Some(store)
    } else {
        None
    };
    // Until the API is up, requests are held for it (refused `starting` if that takes long).
    let (api_up, up) = tokio::sync::watch::channel(None);
    // The requests it hands to the API run on its connections, output streams included, until
    // they end by themselves (at the latest when the API shuts down): no grace period cuts them.
    let held = api::HttpLimits { shutdown_grace_secs: u64::MAX, ..config.http.clone() };
    let starting = serve_meanwhile(&runtime, &listener, api::starting_router(up), &held)?;
    let store: Arc<dyn Store> = match &cluster {
        Some(store) => store.clone(),
        None => open_store(&url)?,
    };
    let engine = EngineConfig {
        cache_dir: Some(config.data_dir.join("modules")),
        pool_instances: config.pool.instances,
        max_memory_bytes: config.pool.max_memory_bytes,
        memory_init: config.pool.memory_init,
        ..EngineConfig::default()
    };
    let mut host_config = HostConfig {
        store,
        runtime: RuntimeConfig { engine, ..RuntimeConfig::default() },
        max_pending_per_app: config.queues.per_app,
        max_pending_total: config.queues.total,
        max_inbox: config.queues.inbox,
        retention: config.retention,
        module_idle: config.module_idle,
        ..HostConfig::default()
    };
    if let Some(workers) = config.workers {
        host_config.workers = workers;
    }
    let host = Arc::new(Host::new(host_config)?);
    for seed in config.tenants {
        match host.create_tenant(&seed.name, seed.config) {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let mut api =
        Api::new(host.clone(), &admin_token).with_default_tenant(config.defaults.clone()).with_limits(&config.http);
    if let Some(store) = cluster {
        api = api.with_cluster(store);
    }
    // The requests held meanwhile go to the API, whose own loop takes the socket's connections
    // from here on.
    let routes = router(api.clone());
    api_up.send_replace(Some(routes.clone()));
    drop(starting);
    stopped_while_starting.abort();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (closing, shutdown_api) = (api.closing(), api.clone());
        let mut stopping = stopping;
        let shutdown = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            shutdown_api.set_unready();
            tracing::info!("shutting down: no new requests; finishing the actions in flight");
        };
        api::serve(listener, routes, &config.http, closing, shutdown).await?;
        anyhow::Ok(())
    })?;
    drop(runtime);
    // The last handle: dropping the host finishes the actions in flight and commits them.
    drop(host);
    Ok(ExitCode::SUCCESS)
}

/// One host acts for the database at a time: this one waits (a standby) while another holds
/// the shards, forwarding the requests it gets to that one, and returns once it holds them all
/// (the sessions are loaded only then). A host that later loses its shards can write nothing
/// more: it exits 3, to be started again as a standby (everything it acknowledged is committed;
/// what it had not is refused).
fn wait_for_the_shards(
    runtime: &tokio::runtime::Runtime,
    listener: &std::net::TcpListener,
    config: &ServeConfig,
    store: &Arc<PgStore>,
    policy: &ClaimPolicy,
) -> Result<()> {
    let standby = Standby::new(&policy.node, policy.address.as_deref());
    // Once the shards are this host's, the standby's loop stops taking connections (its
    // requests in flight finish by themselves).
    let forwarding = serve_meanwhile(runtime, listener, standby.clone().router(), &config.http)?;
    let mut told = false;
    let waiting = |holder: &LeaseRow| {
        standby.saw(holder);
        if !told {
            let name = holder.owner.as_deref().unwrap_or("another node");
            eprintln!(
                "standby: {name} holds the shards; this host forwards requests to it, and takes over when it stops or its leases run out"
            );
            told = true;
        }
    };
    let lost = || {
        eprintln!("this host lost its shard leases to another node: exiting");
        std::process::exit(3);
    };
    store.claim_all(policy, waiting, lost)?;
    standby.took_over();
    drop(forwarding);
    Ok(())
}

/// Serves `router` on (a handle of) `listener` until the returned sender is dropped: what a node
/// answers before its API does. Its connections are then closed once their request in flight is
/// answered, so that a client's next request reaches the API.
fn serve_meanwhile(
    runtime: &tokio::runtime::Runtime,
    listener: &std::net::TcpListener,
    router: axum::Router,
    limits: &api::HttpLimits,
) -> Result<tokio::sync::oneshot::Sender<()>> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener.try_clone()?)?
    };
    let limits = limits.clone();
    let closing = Arc::new(tokio::sync::watch::channel(false).0);
    runtime.spawn(async move {
        let stop = async move {
            let _ = stopped.await;
        };
        if let Err(error) = api::serve(listener, router, &limits, closing, stop).await {
            tracing::warn!(%error, "the HTTP server that answers before the API failed");
        }
    });
    Ok(stop)
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
