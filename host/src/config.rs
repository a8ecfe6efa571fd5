//! The configuration of `turnstile serve`: a TOML file (see `turnstile.example.toml` at the
//! repository root) that flags and environment variables override.

use crate::engine::{EngineConfig, MemoryInit};
use crate::error::Error;
use crate::host::HostConfig;
use crate::limits::TenantConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The data directory: `turnstile.db` and the compile cache `modules/`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The store, as a URL (`sqlite://PATH`, `postgres://USER@HOST/DB[?schema=NAME&shards=N]` or
    /// `memory:`); default: `sqlite://DATA_DIR/turnstile.db`.
    pub store: Option<String>,
    /// The quota of tenants created without one.
    #[serde(default)]
    pub defaults: TenantConfig,
    /// Worker threads (default: one per core).
    pub workers: Option<usize>,
    /// The operator's token (better given as TURNSTILE_ADMIN_TOKEN).
    pub admin_token: Option<String>,
    /// Instances the pool holds and the memory ceiling of each.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Pending-queue bounds.
    #[serde(default)]
    pub queues: QueueConfig,
    /// Tenants created at start if they don't exist yet.
    #[serde(default)]
    pub tenants: Vec<SeedTenant>,
    /// How long finished sessions are kept (with their outputs) before they are purged.
    #[serde(default = "default_retention", with = "crate::human::duration")]
    pub retention: std::time::Duration,
    /// How long a compiled module no session holds stays in memory; then it is evicted and
    /// loaded again when a session needs it.
    #[serde(default = "default_module_idle", with = "crate::human::duration")]
    pub module_idle: std::time::Duration,
    /// Connection, timeout and upload limits of the HTTP server.
    #[serde(default)]
    pub http: crate::api::HttpLimits,
    /// How this host shares a PostgreSQL store with others (ignored on SQLite).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// A host on PostgreSQL holds the database's shard leases while it runs; another host started
/// on the same database waits as a standby and takes over when the first stops or dies.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in the lease table (default: the machine's host name and the process id).
    pub node: Option<String>,
    /// How long a lease lasts without renewal: a standby takes over this long after the active
    /// host died (renewed every third of it). From 1 s to 5 min.
    #[serde(with = "crate::human::duration")]
    pub lease: std::time::Duration,
    /// Where other nodes reach this one's API, `http://host:port`: a standby forwards the
    /// requests it gets to the acting node's. Default: the address it listens on (or, listening
    /// on every interface, this machine's host name and that port).
    pub advertise: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { node: None, lease: std::time::Duration::from_secs(3), advertise: None }
    }
}

impl ClusterConfig {
    /// How the store claims its shards for this node, which listens on `listening`.
    pub fn policy(&self, listening: SocketAddr) -> Result<crate::store::postgres::ClaimPolicy, Error> {
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(300)).contains(&self.lease) {
            return Err(Error::InvalidConfig {
                field: "cluster.lease",
                problem: format!("{:?} is outside 1s..5min", self.lease),
            });
        }
        let node = self.node.clone().unwrap_or_else(crate::store::postgres::ClaimPolicy::default_node);
        // The name marks the requests this node forwards (an HTTP header) and fills the lease table.
        if node.is_empty() || node.len() > 128 || node.chars().any(char::is_control) {
            return Err(Error::InvalidConfig {
                field: "cluster.node",
                problem: format!("{node:?} is not 1 to 128 bytes without control characters"),
            });
        }
        let address = match &self.advertise {
            Some(address) => {
                let valid = address.strip_prefix("http://").is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                });
                if !valid {
                    return Err(Error::InvalidConfig {
                        field: "cluster.advertise",
                        problem: format!("{address:?} is not an http://host:port address"),
                    });
                }
                address.clone()
            }
            None if listening.ip().is_unspecified() => {
                let host = crate::store::postgres::ClaimPolicy::host_name();
                format!("http://{}:{}", host.as_deref().unwrap_or("localhost"), listening.port())
            }
            None => format!("http://{listening}"),
        };
        Ok(crate::store::postgres::ClaimPolicy { node, lease: self.lease, wait: true, address: Some(address) })
    }
}

fn default_retention() -> std::time::Duration {
    HostConfig::default().retention
}

fn default_module_idle() -> std::time::Duration {
    HostConfig::default().module_idle
}

/// The pool's size and the memory ceiling of one instance.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Instances the pooling allocator holds at once.
    pub instances: u32,
    /// The memory ceiling of one instance, in bytes.
    #[serde(deserialize_with = "crate::human::bytes")]
    pub max_memory_bytes: usize,
    /// How an instance's memory gets its module's data segments: `copy` or `map`.
    pub memory_init: MemoryInit,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let engine = EngineConfig::default();
        PoolConfig {
            instances: engine.pool_instances,
            max_memory_bytes: engine.max_memory_bytes,
            memory_init: engine.memory_init,
        }
    }
}

/// Pending-queue and inbox bounds.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Pending actions of one app.
    pub per_app: usize,
    /// Pending actions of all apps.
    pub total: usize,
    /// Events a busy session may hold.
    pub inbox: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let host = HostConfig::default();
        QueueConfig { per_app: host.max_pending_per_app, total: host.max_pending_total, inbox: host.max_inbox }
    }
}

/// A tenant to create at start.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTenant {
    /// Its name.
    pub name: String,
    /// Its quota and weight.
    #[serde(default)]
    pub config: TenantConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("turnstile-data")
}

impl ServeConfig {
    /// The store URL in force.
    pub fn store_url(&self) -> String {
        self.store.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("turnstile.db").display()))
    }

    /// Parses a configuration file's text.
    pub fn parse(text: &str) -> Result<ServeConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads the configuration file, if any, then applies the flags (`--store` also comes from
    /// `TURNSTILE_STORE`) and `TURNSTILE_ADMIN_TOKEN`.
    pub fn load(
        file: Option<&Path>,
        listen: Option<SocketAddr>,
        data_dir: Option<PathBuf>,
        store: Option<String>,
    ) -> Result<ServeConfig, Error> {
        let mut config: ServeConfig = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                ServeConfig::parse(&text)
                    .map_err(|problem| Error::InvalidConfig { field: "the configuration file", problem })?
            }
            None => ServeConfig::parse("")
                .map_err(|problem| Error::InvalidConfig { field: "the configuration file", problem })?,
        };
        if let Some(listen) = listen {
            config.listen = listen;
        }
        if let Some(dir) = data_dir {
            config.data_dir = dir;
        }
        if let Some(store) = store {
            config.store = Some(store);
        }
        if let Ok(token) = std::env::var("TURNSTILE_ADMIN_TOKEN") {
            config.admin_token = Some(token);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterConfig;
    use crate::error::Error;

    #[test]
    fn a_node_advertises_where_it_listens_unless_told_and_a_bad_name_or_address_is_refused() {
        let listening = "127.0.0.1:8081".parse().expect("an address");
        let policy = ClusterConfig::default().policy(listening).expect("valid");
        assert_eq!(policy.address.as_deref(), Some("http://127.0.0.1:8081"));
        let everywhere = ClusterConfig::default().policy("0.0.0.0:8081".parse().expect("an address")).expect("valid");
        assert!(everywhere.address.as_deref().is_some_and(|a| a.starts_with("http://") && a.ends_with(":8081")));
        let told = ClusterConfig { advertise: Some("http://node-a.internal:80".into()), ..ClusterConfig::default() };
        assert_eq!(told.policy(listening).expect("valid").address.as_deref(), Some("http://node-a.internal:80"));
        for bad in ["", "y\u{1}", "tab\there"] {
            let config = ClusterConfig { node: Some(bad.into()), ..ClusterConfig::default() };
            let refused = config.policy(listening).expect_err(bad);
            assert!(matches!(refused, Error::InvalidConfig { field: "cluster.node", .. }), "{bad:?}: {refused}");
        }
        let named = ClusterConfig { node: Some("nœud-y".into()), ..ClusterConfig::default() };
        assert_eq!(named.policy(listening).expect("valid").node, "nœud-y");
        for bad in ["node-a:80", "https://node-a", "http://", "http://a b", "http://a/path"] {
            let config = ClusterConfig { advertise: Some(bad.into()), ..ClusterConfig::default() };
            let refused = config.policy(listening).expect_err(bad);
            assert!(matches!(refused, Error::InvalidConfig { field: "cluster.advertise", .. }), "{bad}: {refused}");
        }
    }
}
