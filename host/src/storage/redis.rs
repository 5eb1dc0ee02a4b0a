//! The TTL cache and locks shared by replicas, on Redis.
//!
//! Redis may go away, or come back empty: every operation is bounded by a
//! short timeout, and while Redis cannot be reached the replica carries on
//! alone: cache entries live in its memory and locks exclude only its own
//! tasks (an upstream fetch may then happen once per replica instead of
//! once). The connection is made again on the next use once Redis answers,
//! without a restart. Nothing in Redis is the only copy of anything: losing
//! a key costs at worst one more upstream request.
//!
//! A lock is a key holding its holder's random token with a lease: the
//! holder renews the lease while it works, deletes the key when done, and
//! another replica takes the lock over only once the lease has lapsed (its
//! holder died). Renewing and releasing compare the token first, so a holder
//! whose lease lapsed never extends or removes a newer holder's lock, and
//! [`LockGuard::still_held`] lets it check before it commits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};

use super::kv::{Held, LockGuard, Locks, MemoryCache, MemoryLocks, TtlCache};

/// The longest one Redis operation may take before Redis counts as
/// unreachable for it.
const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often a replica tries to reach an unreachable Redis again.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How often a waiter asks whether a lock held elsewhere is free.
const POLL_EVERY: Duration = Duration::from_millis(25);
/// Every key this server writes starts with this.
const PREFIX: &str = "artifactapi/";

/// Extends a lock's lease if the caller still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Removes a lock if the caller still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// A connection to Redis that is made again when it breaks.
pub struct Redis {
    client: redis::Client,
    url_shown: String,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Why the last operation failed, and when; None while Redis answers.
    down: Mutex<Option<(String, Instant)>>,
    /// When a connection was last attempted while Redis was down.
    last_attempt: Mutex<Option<Instant>>,
    renew: Script,
    release: Script,
    /// The mark this process found in Redis on its last connection.
    epoch: Mutex<Option<String>>,
    /// How often Redis was found to have lost its keys (restarted empty).
    resets: AtomicU64,
}

/// The key marking one life of Redis's data: a new mark means every key
/// was lost.
const EPOCH: &str = "artifactapi/epoch";

/// Why Redis cannot be used now.
#[derive(Debug, thiserror::Error)]
#[error("Redis unavailable: {0}")]
pub struct Unavailable(String);

impl Redis {
    /// A client for `url`; nothing is connected until first use, so a
    /// server starts even while Redis is down.
    pub fn new(url: &str) -> anyhow::Result<Arc<Redis>> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
        let info = client.get_connection_info();
        Ok(Arc::new(Redis {
            url_shown: format!("{}", info.addr),
            client,
            conn: tokio::sync::Mutex::new(None),
            down: Mutex::new(None),
            last_attempt: Mutex::new(None),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            epoch: Mutex::new(None),
            resets: AtomicU64::new(0),
        }))
    }

    /// Why Redis is not being used, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.down
            .lock()
            .expect("redis state poisoned")
            .as_ref()
            .map(|(why, _)| format!("Redis at {} is unreachable: {why}", self.url_shown))
    }

    /// Whether Redis answers a PING now.
    pub async fn ping(&self) -> bool {
        self.run(redis::cmd("PING"))
            .await
            .map(|_: String| ())
            .is_ok()
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Unavailable> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        {
            let mut last = self.last_attempt.lock().expect("redis state poisoned");
            let down = self.down.lock().expect("redis state poisoned").is_some();
            if down && last.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
                return Err(Unavailable("not answering; trying again shortly".into()));
            }
            *last = Some(Instant::now());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(OP_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT);
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(mut fresh) => {
                if let Err(e) = self.check_epoch(&mut fresh).await {
                    return Err(self.failed(e.to_string()));
                }
                *conn = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    /// Notes whether Redis still holds the data this process saw before
    /// (a new epoch mark means it restarted empty).
    async fn check_epoch(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let mark = uuid::Uuid::new_v4().to_string();
        let mut set = redis::cmd("SET");
        set.arg(EPOCH).arg(&mark).arg("NX");
        bounded(set.query_async::<Option<String>>(conn)).await?;
        let mut get = redis::cmd("GET");
        get.arg(EPOCH);
        let current: Option<String> = bounded(get.query_async(conn)).await?;
        let mut seen = self.epoch.lock().expect("redis state poisoned");
        if seen.is_some() && *seen != current {
            self.resets.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(redis = %self.url_shown, "Redis lost its keys (restarted empty): what was derived from them is made again");
        }
        *seen = current;
        Ok(())
    }

    /// How often Redis was found to have lost every key since this process
    /// started: what a process derived from keys it read folds this in.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    fn failed(&self, why: String) -> Unavailable {
        let mut down = self.down.lock().expect("redis state poisoned");
        if down.is_none() {
            tracing::warn!(redis = %self.url_shown, error = %why, "Redis unreachable: carrying on with this replica's memory");
        }
        *down = Some((why.clone(), Instant::now()));
        Unavailable(why)
    }

    fn answered(&self) {
        let mut down = self.down.lock().expect("redis state poisoned");
        if let Some((_, since)) = down.take() {
            tracing::info!(redis = %self.url_shown, after_seconds = since.elapsed().as_secs(), "Redis reachable again");
        }
    }

    /// Runs one command, bounded by [`OP_TIMEOUT`].
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, Unavailable> {
        let mut conn = self.connection().await?;
        let result = bounded(cmd.query_async::<T>(&mut conn)).await;
        self.settle(result)
    }

    /// Runs one script, bounded by [`OP_TIMEOUT`].
    async fn script(&self, script: &Script, key: &str, args: &[&str]) -> Result<i64, Unavailable> {
        let mut conn = self.connection().await?;
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        let result = bounded(invocation.invoke_async::<i64>(&mut conn)).await;
        self.settle(result)
    }

    fn settle<T>(&self, result: redis::RedisResult<T>) -> Result<T, Unavailable> {
        match result {
            Ok(value) => {
                self.answered();
                Ok(value)
            }
            Err(e) if !is_connection_problem(&e) => {
                self.answered();
                Err(Unavailable(e.to_string()))
            }
            Err(e) => Err(self.drop_connection(e.to_string())),
        }
    }

    fn drop_connection(&self, why: String) -> Unavailable {
        if let Ok(mut conn) = self.conn.try_lock() {
            *conn = None;
        }
        self.failed(why)
    }
}

/// The hash holding the cluster's counters, field by field.
const COUNTERS: &str = "artifactapi/counters";

impl Redis {
    /// Adds these amounts to the cluster's counters, all or none.
    pub async fn add_counters(&self, amounts: &[(String, u64)]) -> Result<(), Unavailable> {
        if amounts.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (field, amount) in amounts {
            pipe.cmd("HINCRBY")
                .arg(COUNTERS)
                .arg(field)
                .arg(*amount)
                .ignore();
        }
        let result = bounded(pipe.query_async::<()>(&mut conn)).await;
        self.settle(result)
    }

    /// Every counter of the cluster.
    pub async fn counters(&self) -> Result<Vec<(String, u64)>, Unavailable> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(COUNTERS);
        let all: Vec<(String, i64)> = self.run(cmd).await?;
        Ok(all
            .into_iter()
            .map(|(field, value)| (field, value.max(0) as u64))
            .collect())
    }
}

/// `op`, failing with a timeout after [`OP_TIMEOUT`].
async fn bounded<T>(
    op: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}

fn is_connection_problem(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

fn full_key(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// The TTL cache on Redis, with this replica's memory while Redis is down.
pub struct RedisCache {
    redis: Arc<Redis>,
    fallback: MemoryCache,
}

impl RedisCache {
    /// A cache on `redis`.
    pub fn new(redis: Arc<Redis>) -> RedisCache {
        RedisCache {
            redis,
            fallback: MemoryCache::new(16 << 20),
        }
    }
}

#[async_trait]
impl TtlCache for RedisCache {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(full_key(key));
        match self.redis.run::<Option<Vec<u8>>>(cmd).await {
            Ok(value) => Ok(value.map(Bytes::from)),
            Err(_) => self.fallback.get(key).await,
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> anyhow::Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(full_key(key))
            .arg(value.as_ref())
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        match self.redis.run::<()>(cmd).await {
            Ok(()) => Ok(()),
            Err(_) => self.fallback.set(key, value, ttl).await,
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(full_key(key));
        let _ = self.redis.run::<i64>(cmd).await;
        self.fallback.delete(key).await
    }
}

/// Locks on Redis with renewed leases, over this replica's own locks (its
/// tasks queue in memory, and only while Redis is down do they stand alone).
pub struct RedisLocks {
    redis: Arc<Redis>,
    local: MemoryLocks,
    lease: Duration,
}

impl RedisLocks {
    /// Locks on `redis` held for `lease` between renewals.
    pub fn new(redis: Arc<Redis>, lease: Duration) -> RedisLocks {
        RedisLocks {
            redis,
            local: MemoryLocks::default(),
            lease,
        }
    }
}

#[async_trait]
impl Locks for RedisLocks {
    async fn lock(&self, key: &str) -> anyhow::Result<LockGuard> {
        let local = self.local.lock(key).await?;
        let name = full_key(key);
        let token = uuid::Uuid::new_v4().to_string();
        let lease_ms = self.lease.as_millis().max(1) as u64;
        loop {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&name).arg(&token).arg("NX").arg("PX").arg(lease_ms);
            match self.redis.run::<Option<String>>(cmd).await {
                Ok(Some(_)) => break,
                Ok(None) => tokio::time::sleep(POLL_EVERY).await,
                Err(e) => {
                    tracing::debug!(lock = key, error = %e, "lock taken on this replica only");
                    return Ok(local);
                }
            }
        }
        let held = Arc::new(RedisHeld {
            redis: self.redis.clone(),
            name,
            token,
            lost: AtomicBool::new(false),
        });
        let renewer = tokio::spawn(renew(held.clone(), self.lease));
        Ok(LockGuard::new(Box::new(Holding {
            held,
            renewer,
            _local: local,
        })))
    }
}

/// A lock held in Redis.
struct RedisHeld {
    redis: Arc<Redis>,
    name: String,
    token: String,
    /// Redis said another holder has the lock now.
    lost: AtomicBool,
}

/// Renews the lease every third of it until the lock is released or lost.
async fn renew(held: Arc<RedisHeld>, lease: Duration) {
    let lease_ms = (lease.as_millis().max(1) as u64).to_string();
    loop {
        tokio::time::sleep(lease / 3).await;
        match held
            .redis
            .script(&held.redis.renew, &held.name, &[&held.token, &lease_ms])
            .await
        {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(lock = %held.name, "lock lease lapsed and was taken over");
                held.lost.store(true, Ordering::SeqCst);
                return;
            }
            // Redis is away: the lease cannot be renewed, nor can anyone
            // else take the lock there; try again next period.
            Err(_) => {}
        }
    }
}

struct Holding {
    held: Arc<RedisHeld>,
    renewer: tokio::task::JoinHandle<()>,
    _local: LockGuard,
}

#[async_trait]
impl Held for Holding {
    async fn still_held(&self) -> bool {
        if self.held.lost.load(Ordering::SeqCst) {
            return false;
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.held.name);
        match self.held.redis.run::<Option<String>>(cmd).await {
            Ok(Some(token)) => token == self.held.token,
            // The key is gone (Redis lost it, or the lease lapsed with no
            // taker): nobody else holds the lock.
            Ok(None) => true,
            // Redis is away: nobody else can have taken it there.
            Err(_) => true,
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.renewer.abort();
        let held = self.held.clone();
        if held.lost.load(Ordering::SeqCst) {
            return;
        }
        tokio::spawn(async move {
            let _ = held
                .redis
                .script(&held.redis.release, &held.name, &[&held.token])
                .await;
        });
    }
}
