//! Connections to Redis: `pool_size` multiplexed connections, each made when first needed and
//! made again after Redis was unreachable through it. Through sentinels, making one asks them for
//! the master, so after a failover the next connection goes to the new master.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, RedisFuture, TlsCertificates, TlsMode, Value,
};

use crate::config::{RedisConfig, RedisType, SslVerify};
use crate::store::StoreError;

/// How long making a connection may take: an unreachable Redis is noticed this fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

enum Source {
    Single(Client),
    /// `&mut` to ask the sentinels.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub struct Connections {
    source: Source,
    /// Where to connect, for errors.
    target: String,
    slots: Vec<tokio::sync::Mutex<Option<Conn>>>,
    next: AtomicUsize,
    open: AtomicU32,
    in_flight: AtomicU32,
    /// `query_timeout`: how long one request may take.
    response_timeout: Duration,
}

impl Connections {
    pub fn new(cfg: &RedisConfig, response_timeout: Duration) -> Result<Connections, StoreError> {
        let target = cfg.servers.join(",");
        let config_error = |cause| StoreError::RedisConnect { target: target.clone(), cause };
        let tls = tls(cfg)?;
        let addr = |server: &str| {
            let (host, port) = match server.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(6379)),
                None => (server.to_owned(), 6379),
            };
            match &tls {
                Some((mode, _)) => {
                    ConnectionAddr::TcpTls { host, port, insecure: *mode == TlsMode::Insecure, tls_params: None }
                }
                None => ConnectionAddr::Tcp(host, port),
            }
        };
        let mut settings = RedisConnectionInfo::default().set_db(i64::from(cfg.database));
        if let Some(user) = &cfg.username {
            settings = settings.set_username(user);
        }
        if !cfg.password.expose().is_empty() {
            settings = settings.set_password(cfg.password.expose());
        }
        let source = match cfg.redis_type {
            RedisType::Single => {
                let info =
                    addr(&cfg.servers[0]).into_connection_info().map_err(config_error)?.set_redis_settings(settings);
                let client = match &tls {
                    Some((_, certs)) => Client::build_with_tls(info, certs.clone()),
                    None => Client::open(info),
                };
                Source::Single(client.map_err(config_error)?)
            }
            RedisType::Sentinel => {
                let mut b = SentinelClientBuilder::new(
                    cfg.servers.iter().map(|s| addr(s)),
                    &cfg.sentinel,
                    SentinelServerType::Master,
                )
                .map_err(config_error)?
                .set_client_to_redis_db(i64::from(cfg.database));
                if let Some(user) = &cfg.username {
                    b = b.set_client_to_redis_username(user);
                }
                if !cfg.password.expose().is_empty() {
                    b = b.set_client_to_redis_password(cfg.password.expose());
                }
                if let Some((mode, certs)) = &tls {
                    b = b
                        .set_client_to_redis_tls_mode(*mode)
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_tls_mode(*mode)
                        .set_client_to_sentinel_certificates(certs.clone());
                }
                Source::Sentinel(tokio::sync::Mutex::new(b.build().map_err(config_error)?))
            }
            RedisType::Cluster => {
                let nodes = cfg.servers.iter().map(|s| addr(s)).collect::<Vec<_>>();
                let mut b = ClusterClientBuilder::new(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout);
                if let Some(user) = &cfg.username {
                    b = b.username(user);
                }
                if !cfg.password.expose().is_empty() {
                    b = b.password(cfg.password.expose());
                }
                if let Some((mode, certs)) = &tls {
                    b = b.tls(*mode).certs(certs.clone());
                }
                Source::Cluster(b.build().map_err(config_error)?)
            }
        };
        let slots = (0..cfg.pool_size).map(|_| tokio::sync::Mutex::new(None)).collect();
        Ok(Connections {
            source,
            target,
            slots,
            next: AtomicUsize::new(0),
            open: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            response_timeout,
        })
    }

    /// A connection of the pool (round robin), made now if it is not open.
    async fn get(&self) -> Result<(usize, Conn), StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = &*slot {
            return Ok((i, c.clone()));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.response_timeout));
        let made = match &self.source {
            Source::Single(client) => {
                client.get_multiplexed_async_connection_with_config(&config).await.map(Conn::Node)
            }
            Source::Sentinel(s) => s.lock().await.get_async_connection_with_config(&config).await.map(Conn::Node),
            Source::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        };
        let c = made.map_err(|cause| StoreError::RedisConnect { target: self.target.clone(), cause })?;
        self.open.fetch_add(1, Ordering::Relaxed);
        *slot = Some(c.clone());
        Ok((i, c))
    }

    /// Runs `work` on a connection within `query_timeout`; a connection through which Redis was
    /// unreachable, or that took too long, is closed (the next one asks the sentinels again).
    async fn with<T>(
        &self,
        key: &'static str,
        work: impl AsyncFnOnce(Conn) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        let after = self.response_timeout;
        let timeout = || StoreError::Timeout { key, backend: "redis", after };
        let (i, conn) = tokio::time::timeout(after, self.get()).await.map_err(|_| timeout())??;
        let result = {
            let _in_flight = InFlight::new(&self.in_flight);
            tokio::time::timeout(after, work(conn)).await
        };
        let e = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(cause)) => StoreError::Redis { key, cause },
            Err(_) => timeout(),
        };
        if e.is_unreachable() && self.slots[i].lock().await.take().is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
        Err(e)
    }

    /// `cmds` in one `MULTI`/`EXEC` on a server; all at once on a cluster, each to its node.
    pub async fn write(&self, key: &'static str, cmds: Vec<Cmd>) -> Result<(), StoreError> {
        self.with(key, async |conn| match conn {
            Conn::Node(mut c) => {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for cmd in cmds {
                    pipe.add_command(cmd).ignore();
                }
                pipe.query_async::<()>(&mut c).await
            }
            Conn::Cluster(c) => all::<()>(c, cmds).await.map(drop),
        })
        .await
    }

    /// The replies of `cmds`: one pipeline on a server; all at once on a cluster.
    pub async fn read<T: redis::FromRedisValue + Send + 'static>(
        &self,
        key: &'static str,
        cmds: Vec<Cmd>,
    ) -> Result<Vec<T>, StoreError> {
        self.with(key, async |conn| match conn {
            Conn::Node(mut c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async::<Vec<T>>(&mut c).await
            }
            Conn::Cluster(c) => all(c, cmds).await,
        })
        .await
    }

    /// Requests in flight (at most the connections open), connections open.
    pub fn usage(&self) -> (u32, u32) {
        let open = self.open.load(Ordering::Relaxed);
        (self.in_flight.load(Ordering::Relaxed).min(open), open)
    }
}

/// Counts a request in flight until dropped (also when its future is cut off by a timeout).
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every command sent at once over the cluster connection, which routes each to its slot's node.
async fn all<T: redis::FromRedisValue>(c: ClusterConnection, cmds: Vec<Cmd>) -> Result<Vec<T>, RedisError> {
    futures_util::future::try_join_all(cmds.into_iter().map(|cmd| {
        let mut c = c.clone();
        async move { cmd.query_async::<T>(&mut c).await }
    }))
    .await
}

/// `redis.ssl`: the TLS mode and the PEM files, read now so that a wrong path stops the start.
fn tls(cfg: &RedisConfig) -> Result<Option<(TlsMode, TlsCertificates)>, StoreError> {
    let ssl = &cfg.ssl;
    if !ssl.enable {
        return Ok(None);
    }
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one meanwhile: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let read = |key: &'static str, path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, StoreError> {
        path.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|cause| StoreError::TlsFile { key, path: p.display().to_string(), cause })
            })
            .transpose()
    };
    let root_cert = read("redis.ssl.cacertfile", &ssl.cacertfile)?;
    let cert = read("redis.ssl.certfile", &ssl.certfile)?;
    let key = read("redis.ssl.keyfile", &ssl.keyfile)?;
    let client_tls = match (cert, key) {
        (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig { client_cert, client_key }),
        _ => None,
    };
    let mode = if ssl.verify == SslVerify::VerifyNone { TlsMode::Insecure } else { TlsMode::Secure };
    Ok(Some((mode, TlsCertificates { client_tls, root_cert })))
}
