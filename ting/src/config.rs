//! Configuration of `ting serve`: command-line flags and environment variables override an
//! optional TOML file, which overrides the built-in defaults.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use ting_collab::{BlobConfig, FileLimits};
use ting_protocol::NodeId;
use ting_sfu::DEFAULT_MAX_SUBSCRIPTIONS;

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_UDP_PORT: u16 = 7882;
pub const DEFAULT_TCP_PORT: u16 = 7881;
/// Node links (QUIC, UDP) in cluster mode; clear of the media ports of a few shards.
pub const DEFAULT_RELAY_PORT: u16 = 7890;
/// Participants one node takes in cluster mode unless configured.
pub const DEFAULT_NODE_CAPACITY: u32 = 1000;

/// Flags shared by commands that need the token secret.
#[derive(Debug, Clone, Args, Default)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, env = "TING_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for Ting's data (token secret, later chat and files).
    #[arg(long, env = "TING_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Secret that signs join tokens. Default: a random secret kept in the data directory.
    #[arg(long, env = "TING_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
}

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// HTTP port: web client, WebSocket signalling, WHIP/WHEP, /metrics, /healthz.
    #[arg(long, env = "TING_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// UDP port for all media.
    #[arg(long, env = "TING_UDP_PORT")]
    pub udp_port: Option<u16>,
    /// TCP port for ICE-TCP media, the fallback where UDP is blocked.
    #[arg(long, env = "TING_TCP_PORT")]
    pub tcp_port: Option<u16>,
    /// Turn off the ICE-TCP fallback.
    #[arg(long, env = "TING_NO_ICE_TCP")]
    pub no_ice_tcp: bool,
    /// Address to listen on; 0.0.0.0 listens on every interface.
    #[arg(long, env = "TING_BIND")]
    pub bind: Option<IpAddr>,
    /// Public address(es) clients reach the media port at, when behind NAT (repeatable).
    #[arg(long = "public-ip", env = "TING_PUBLIC_IP", value_delimiter = ',')]
    pub public_ips: Vec<IpAddr>,
    /// Turn off quick start (the landing page minting tokens for any room name).
    #[arg(long, env = "TING_NO_QUICK_START")]
    pub no_quick_start: bool,
    /// Seconds a participant whose WebSocket dropped is kept for a resume.
    #[arg(long, env = "TING_RESUME_GRACE_SECS")]
    pub resume_grace_secs: Option<u64>,
    /// Loudest-N: how many speakers each participant hears at once (audio slots).
    #[arg(long, env = "TING_LOUDEST_N")]
    pub loudest_n: Option<usize>,
    /// Most tracks one participant may subscribe to at once (audio slots not counted).
    #[arg(long, env = "TING_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Media shards (threads), each with its own UDP/ICE-TCP ports (the configured port plus
    /// the shard's index); rooms are spread over them. Default: one per core.
    #[arg(long, env = "TING_SHARDS")]
    pub shards: Option<usize>,
    /// Cluster mode: the Redis that joins this node to the others (`redis://host:6379`).
    #[arg(long = "redis", env = "TING_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of this cluster's Redis keys (several clusters may share one Redis).
    #[arg(long, env = "TING_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// This node's name in the cluster (letters, digits, '-', '_', '.'); needed with --redis.
    #[arg(long, env = "TING_NODE_ID")]
    pub node_id: Option<String>,
    /// Where this node runs; participants are placed on nodes of their own region first.
    #[arg(long, env = "TING_REGION")]
    pub region: Option<String>,
    /// Most participants this node takes before the cluster places people elsewhere.
    #[arg(long, env = "TING_NODE_CAPACITY")]
    pub node_capacity: Option<u32>,
    /// UDP port of the links to the other nodes (QUIC: media relay and remote media calls).
    #[arg(long, env = "TING_RELAY_PORT")]
    pub relay_port: Option<u16>,
    /// Chat, boards, whiteboards and file metadata: `postgres://…` (needed in cluster mode)
    /// or `sqlite://path`. Default: `ting.db` in the data directory.
    #[arg(long, env = "TING_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File drop contents in an S3-compatible bucket instead of `files/` in the data directory
    /// (with --s3-access-key-id and --s3-secret-access-key). A cluster's nodes need one shared
    /// store: a bucket, or one directory they all mount.
    #[arg(long, env = "TING_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// The S3 endpoint (MinIO, Ceph, Garage…); default AWS.
    #[arg(long, env = "TING_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "TING_S3_REGION")]
    pub s3_region: Option<String>,
    #[arg(long, env = "TING_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "TING_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Record every meeting from its first publisher on (moderators may stop it).
    #[arg(long, env = "TING_AUTO_RECORD")]
    pub auto_record: bool,
    /// Largest file in the file drop, in MiB (default 2048).
    #[arg(long, env = "TING_MAX_FILE_MB")]
    pub max_file_mb: Option<u64>,
    /// File drop quota per room, in MiB (default 10240).
    #[arg(long, env = "TING_ROOM_QUOTA_MB")]
    pub room_quota_mb: Option<u64>,
}

/// The TOML file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub token_secret: Option<String>,
    pub http_port: Option<u16>,
    pub udp_port: Option<u16>,
    /// ICE-TCP port; `0` picks one, absent means 7881. `ice_tcp = false` turns it off.
    pub tcp_port: Option<u16>,
    pub ice_tcp: Option<bool>,
    pub bind: Option<IpAddr>,
    #[serde(default)]
    pub public_ips: Vec<IpAddr>,
    pub quick_start: Option<bool>,
    pub resume_grace_secs: Option<u64>,
    pub loudest_n: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub shards: Option<usize>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub node_id: Option<String>,
    pub region: Option<String>,
    pub node_capacity: Option<u32>,
    pub relay_port: Option<u16>,
    pub database_url: Option<String>,
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub max_file_mb: Option<u64>,
    pub room_quota_mb: Option<u64>,
    pub auto_record: Option<bool>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

/// Cluster mode: how this node joins the others through Redis.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub key_prefix: String,
    pub node_id: NodeId,
    pub region: String,
    pub capacity: u32,
    /// `0`: any free port.
    pub relay_port: u16,
}

/// What a node does: `ting serve` everything, `ting sfu` media only, `ting signalling` clients
/// and rooms only (its participants' media goes to `ting sfu` nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub media: bool,
    pub signalling: bool,
}

impl Roles {
    pub const ALL: Self = Self {
        media: true,
        signalling: true,
    };
    pub const MEDIA: Self = Self {
        media: true,
        signalling: false,
    };
    pub const SIGNALLING: Self = Self {
        media: false,
        signalling: true,
    };
}

/// Everything `ting serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub roles: Roles,
    pub data_dir: PathBuf,
    pub token_secret: Vec<u8>,
    pub http_port: u16,
    pub udp_port: u16,
    /// `None`: no ICE-TCP.
    pub tcp_port: Option<u16>,
    pub bind: IpAddr,
    pub public_ips: Vec<IpAddr>,
    pub quick_start: bool,
    pub resume_grace: Duration,
    pub loudest_n: usize,
    pub max_subscriptions: usize,
    pub shards: usize,
    /// `None`: the embedded default, a cluster of one with its state in memory.
    pub cluster: Option<ClusterConfig>,
    /// `None`: no collaboration add-ons (a cluster without a shared database).
    pub collab: Option<CollabSettings>,
    /// Record every meeting from its first publisher on.
    pub auto_record: bool,
}

/// Where collaboration data lives.
#[derive(Debug, Clone)]
pub struct CollabSettings {
    pub database_url: String,
    pub blobs: BlobConfig,
    pub limits: FileLimits,
}

impl ServeConfig {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        Self::resolve_for(args, Roles::ALL)
    }

    /// The configuration of a node with `roles`; a node with only some roles works in a
    /// cluster only.
    pub fn resolve_for(args: &ServeArgs, roles: Roles) -> anyhow::Result<Self> {
        let file = FileConfig::load(args.common.config.as_deref())?;
        let data_dir = resolve_data_dir(&args.common, &file);
        let token_secret = resolve_secret(&args.common, &file, &data_dir)?;
        let cluster = resolve_cluster(args, &file)?;
        let collab = resolve_collab(args, &file, &data_dir, cluster.is_some())?;
        anyhow::ensure!(
            roles == Roles::ALL || cluster.is_some(),
            "`ting sfu` and `ting signalling` are cluster roles: give --redis and --node-id \
             (or run `ting serve`, which does both)"
        );
        Ok(Self {
            roles,
            cluster,
            collab,
            auto_record: args.auto_record || file.auto_record.unwrap_or(false),
            token_secret,
            http_port: args
                .http_port
                .or(file.http_port)
                .unwrap_or(DEFAULT_HTTP_PORT),
            udp_port: args.udp_port.or(file.udp_port).unwrap_or(DEFAULT_UDP_PORT),
            tcp_port: (!args.no_ice_tcp && file.ice_tcp.unwrap_or(true))
                .then(|| args.tcp_port.or(file.tcp_port).unwrap_or(DEFAULT_TCP_PORT)),
            bind: args
                .bind
                .or(file.bind)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            public_ips: if args.public_ips.is_empty() {
                file.public_ips
            } else {
                args.public_ips.clone()
            },
            quick_start: !args.no_quick_start && file.quick_start.unwrap_or(true),
            loudest_n: args.loudest_n.or(file.loudest_n).unwrap_or(3).clamp(1, 16),
            max_subscriptions: args
                .max_subscriptions
                .or(file.max_subscriptions)
                .unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS)
                .clamp(1, 256),
            shards: args
                .shards
                .or(file.shards)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .clamp(1, 64),
            resume_grace: Duration::from_secs(
                args.resume_grace_secs
                    .or(file.resume_grace_secs)
                    .unwrap_or(30),
            ),
            data_dir,
        })
    }
}

fn resolve_collab(
    args: &ServeArgs,
    file: &FileConfig,
    data_dir: &Path,
    clustered: bool,
) -> anyhow::Result<Option<CollabSettings>> {
    let database_url = match args
        .database_url
        .clone()
        .or_else(|| file.database_url.clone())
    {
        Some(url) => url,
        // Nodes of a cluster must share one database; a private SQLite file would split it.
        None if clustered => return Ok(None),
        None => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            format!("sqlite://{}", data_dir.join("ting.db").display())
        }
    };
    anyhow::ensure!(
        database_url.starts_with("sqlite:") || database_url.starts_with("postgres"),
        "--database-url must be sqlite://… or postgres://…"
    );
    let blobs = match args.s3_bucket.clone().or_else(|| file.s3_bucket.clone()) {
        Some(bucket) => BlobConfig::S3 {
            bucket,
            endpoint: args
                .s3_endpoint
                .clone()
                .or_else(|| file.s3_endpoint.clone()),
            region: args
                .s3_region
                .clone()
                .or_else(|| file.s3_region.clone())
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: args
                .s3_access_key_id
                .clone()
                .context("--s3-bucket needs --s3-access-key-id (TING_S3_ACCESS_KEY_ID)")?,
            secret_access_key: args
                .s3_secret_access_key
                .clone()
                .context("--s3-bucket needs --s3-secret-access-key (TING_S3_SECRET_ACCESS_KEY)")?,
        },
        None => BlobConfig::Local(data_dir.join("files")),
    };
    let defaults = FileLimits::default();
    let mib = |n: u64| n.saturating_mul(1 << 20);
    Ok(Some(CollabSettings {
        database_url,
        blobs,
        limits: FileLimits {
            max_file_bytes: args
                .max_file_mb
                .or(file.max_file_mb)
                .map_or(defaults.max_file_bytes, mib),
            room_quota_bytes: args
                .room_quota_mb
                .or(file.room_quota_mb)
                .map_or(defaults.room_quota_bytes, mib),
            ..defaults
        },
    }))
}

fn resolve_cluster(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(redis_url) = args.redis_url.clone().or_else(|| file.redis_url.clone()) else {
        return Ok(None);
    };
    let node_id = args
        .node_id
        .clone()
        .or_else(|| file.node_id.clone())
        .context("cluster mode (--redis) needs a node id: --node-id or TING_NODE_ID")?;
    let node_id =
        NodeId::new(&node_id).map_err(|e| anyhow::anyhow!("--node-id {node_id:?}: {e}"))?;
    Ok(Some(ClusterConfig {
        redis_url,
        key_prefix: args
            .redis_prefix
            .clone()
            .or_else(|| file.redis_prefix.clone())
            .unwrap_or_else(|| "ting".into()),
        node_id,
        region: args
            .region
            .clone()
            .or_else(|| file.region.clone())
            .unwrap_or_else(|| "default".into()),
        capacity: args
            .node_capacity
            .or(file.node_capacity)
            .unwrap_or(DEFAULT_NODE_CAPACITY)
            .max(1),
        relay_port: args
            .relay_port
            .or(file.relay_port)
            .unwrap_or(DEFAULT_RELAY_PORT),
    }))
}

pub fn resolve_data_dir(common: &CommonArgs, file: &FileConfig) -> PathBuf {
    common
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("ting-data"))
}

/// The configured secret, or the one stored in the data directory (created on first use), so
/// that `ting token` and `ting serve` agree without configuration.
pub fn resolve_secret(
    common: &CommonArgs,
    file: &FileConfig,
    data_dir: &Path,
) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = common
        .token_secret
        .clone()
        .or_else(|| file.token_secret.clone())
    {
        anyhow::ensure!(
            secret.len() >= 16,
            "the token secret must be at least 16 characters"
        );
        return Ok(secret.into_bytes());
    }
    let path = data_dir.join("token-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        anyhow::ensure!(
            existing.len() >= 16,
            "{} is too short; delete it to make a new one",
            path.display()
        );
        return Ok(existing.into_bytes());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let secret = ting_signalling_secret();
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

fn ting_signalling_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("ting-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let file = dir.join("ting.toml");
        std::fs::write(&file, "http_port = 9000\nudp_port = 9001\nquick_start = false\ntoken_secret = \"0123456789abcdef\"\n")
            .unwrap_or_default();
        let args = ServeArgs {
            common: CommonArgs {
                config: Some(file),
                data_dir: Some(dir.clone()),
                token_secret: None,
            },
            http_port: Some(7000),
            ..Default::default()
        };
        let config = ServeConfig::resolve(&args).map_err(|e| e.to_string());
        let config = config
            .as_ref()
            .map(|c| (c.http_port, c.udp_port, c.quick_start, c.token_secret.len()));
        assert_eq!(config, Ok((7000, 9001, false, 16)));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn cluster_mode_needs_a_valid_node_id() {
        let dir = std::env::temp_dir().join(format!("ting-config-cluster-{}", std::process::id()));
        let args = |node_id: Option<&str>| ServeArgs {
            common: CommonArgs {
                data_dir: Some(dir.clone()),
                token_secret: Some("0123456789abcdef".into()),
                ..Default::default()
            },
            redis_url: Some("redis://127.0.0.1:6379".into()),
            node_id: node_id.map(String::from),
            ..Default::default()
        };
        let error = |node_id| {
            ServeConfig::resolve(&args(node_id))
                .err()
                .map(|e| e.to_string())
        };
        assert!(error(None).is_some_and(|e| e.contains("--node-id")));
        assert!(error(Some("a/b")).is_some_and(|e| e.contains("node ids are")));
        let config = ServeConfig::resolve(&args(Some("sfu-1"))).map_err(|e| e.to_string());
        let cluster = config.as_ref().map(|c| c.cluster.clone());
        let summary =
            cluster.map(|c| c.map(|c| (c.node_id.to_string(), c.key_prefix, c.region, c.capacity)));
        assert_eq!(
            summary,
            Ok(Some((
                "sfu-1".into(),
                "ting".into(),
                "default".into(),
                DEFAULT_NODE_CAPACITY
            )))
        );
        let embedded = ServeConfig::resolve(&ServeArgs {
            redis_url: None,
            ..args(None)
        });
        assert!(
            embedded.is_ok_and(|c| c.cluster.is_none()),
            "no Redis: the embedded default"
        );
        // One role alone makes sense only in a cluster.
        let lone = ServeConfig::resolve_for(
            &ServeArgs {
                redis_url: None,
                ..args(None)
            },
            Roles::MEDIA,
        );
        assert!(lone.is_err_and(|e| e.to_string().contains("cluster roles")));
        let media = ServeConfig::resolve_for(&args(Some("sfu-1")), Roles::MEDIA);
        assert!(media.is_ok_and(|c| {
            c.roles == Roles::MEDIA
                && c.cluster
                    .is_some_and(|c| c.relay_port == DEFAULT_RELAY_PORT)
        }));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_keys_in_the_file_are_an_error() {
        let parsed: Result<FileConfig, _> = toml::from_str("htp_port = 1");
        assert!(parsed.is_err());
    }

    #[test]
    fn the_stored_secret_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("ting-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let common = CommonArgs::default();
        let first =
            resolve_secret(&common, &FileConfig::default(), &dir).map_err(|e| e.to_string());
        let second =
            resolve_secret(&common, &FileConfig::default(), &dir).map_err(|e| e.to_string());
        assert!(first.as_ref().is_ok_and(|s| s.len() == 64));
        assert_eq!(first, second);
        let _ = std::fs::remove_dir_all(dir);
    }
}
