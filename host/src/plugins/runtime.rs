//! The wasmtime side of plugins: one engine, precompiled components cached on
//! disk, a fresh store per call with a deadline and a memory cap.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::exports::artifactapi::plugin::format::PluginInfo;
use super::bindings::{v0_1, v0_2};
use super::host::CallScope;

/// The WIT package versions this host accepts, newest first.
pub const WIT_VERSIONS: &[&str] = &["0.2.0", "0.1.0"];

/// Tick of the epoch clock that enforces deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Limits every plugin call runs under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time one call may take.
    pub deadline: Duration,
    /// Linear memory one instance may grow to, in bytes.
    pub memory: usize,
    /// Largest index document handed to a plugin, in bytes.
    pub index_size: u64,
    /// Instances that may run at once.
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(5),
            memory: 512 << 20,
            index_size: 128 << 20,
            instances: 64,
        }
    }
}

/// Why a plugin call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// The call ran past its deadline.
    #[error("plugin {plugin} ran past its {deadline:?} deadline")]
    Timeout {
        /// The plugin's name.
        plugin: String,
        /// The deadline.
        deadline: Duration,
    },
    /// The guest trapped or the host could not run it.
    #[error("plugin {plugin} failed: {reason}")]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// What happened.
        reason: String,
    },
}

#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// What a store holds during one call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// What the call may touch through the host imports.
    pub scope: CallScope,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A compiled, linked plugin ready to instantiate, in the WIT version it
/// was built against.
enum Pre {
    V0_1(v0_1::PluginPre<HostState>),
    V0_2(v0_2::PluginPre<HostState>),
}

/// One instance of a plugin, for one call.
pub enum Instance {
    /// Built against 0.1.0: called through [`super::v0_1`].
    V0_1(v0_1::Plugin),
    /// Built against 0.2.0.
    V0_2(v0_2::Plugin),
}

/// A compiled, linked plugin ready to instantiate.
pub struct Compiled {
    pre: Pre,
    /// The file's sha256, hex.
    pub sha256: String,
    /// The environment variables (name, value) the plugin's instances see.
    pub(super) environment: Vec<(String, String)>,
}

impl Compiled {
    /// The WIT contract version the component was built against.
    pub fn wit_version(&self) -> &'static str {
        match self.pre {
            Pre::V0_1(_) => "0.1.0",
            Pre::V0_2(_) => "0.2.0",
        }
    }
}

/// The engine, the linker and the on-disk cache of compiled components.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: PathBuf,
    engine_hash: u64,
    permits: Arc<Semaphore>,
    calls: AtomicU64,
    /// Limits every call runs under.
    pub limits: Limits,
}

impl Runtime {
    /// Builds the engine and starts its epoch clock. Compiled components are
    /// cached under `cache_dir`.
    pub fn new(cache_dir: &Path, limits: Limits) -> anyhow::Result<Runtime> {
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating {}", cache_dir.display()))?;
        let mut pool = PoolingAllocationConfig::new();
        let instances = limits.instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(limits.memory)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::msg)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::msg)?;
        v0_2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(anyhow::Error::msg)?;
        v0_1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
            .map_err(anyhow::Error::msg)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hasher.finish();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            engine_hash,
            permits: Arc::new(Semaphore::new(instances as usize)),
            calls: AtomicU64::new(0),
            limits,
        })
    }

    /// Compiles (or loads the cached compilation of) a component and links it.
    /// Blocking: call off the async workers.
    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Compiled> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let cached = self
            .cache_dir
            .join(format!("{sha256}-{:016x}.cwasm", self.engine_hash));
        let component = match self.load_cached(&cached) {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|e| anyhow::anyhow!("not a valid plugin component: {e:#}"))?;
                self.store_cached(&cached, &component);
                component
            }
        };
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("the component does not fit the plugin contract: {e:#}")
        })?;
        let pre = match v0_2::PluginPre::new(pre.clone()) {
            Ok(pre) => Pre::V0_2(pre),
            Err(newest) => match v0_1::PluginPre::new(pre) {
                Ok(pre) => Pre::V0_1(pre),
                Err(_) => anyhow::bail!(
                    "the component does not export artifactapi:plugin/format@{}: {newest:#}",
                    WIT_VERSIONS.join(" or @")
                ),
            },
        };
        Ok(Compiled {
            pre,
            sha256,
            environment: Vec::new(),
        })
    }

    fn load_cached(&self, path: &Path) -> Option<Component> {
        if !path.exists() {
            return None;
        }
        // SAFETY: files in the cache directory are written only by
        // `store_cached` from `Component::serialize` of this engine's
        // configuration (the file name carries the engine's compatibility
        // hash), and wasmtime checks the header again on load.
        match unsafe { Component::deserialize_file(&self.engine, path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable compiled plugin");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn store_cached(&self, path: &Path, component: &Component) {
        let result = component
            .serialize()
            .map_err(anyhow::Error::msg)
            .and_then(|bytes| {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, path)?;
                Ok(())
            });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin");
        }
    }

    /// Runs one call against a fresh instance of `compiled`, under the
    /// deadline and memory cap. `name` names the plugin in failures.
    pub async fn call<R, F>(
        &self,
        compiled: &Compiled,
        name: &str,
        scope: CallScope,
        f: F,
    ) -> Result<R, CallFailure>
    where
        F: for<'a> FnOnce(
            &'a Instance,
            &'a mut Store<HostState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
        R: Send,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| CallFailure::Trap {
                plugin: name.to_string(),
                reason: e.to_string(),
            })?;
        let mut wasi = WasiCtx::builder();
        for (name, value) in &compiled.environment {
            wasi.env(name, value);
        }
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory)
                .trap_on_grow_failure(true)
                .build(),
            scope,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let deadline = Instant::now() + self.limits.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let result = async {
            let instance = match &compiled.pre {
                Pre::V0_1(pre) => Instance::V0_1(pre.instantiate_async(&mut store).await?),
                Pre::V0_2(pre) => Instance::V0_2(pre.instantiate_async(&mut store).await?),
            };
            f(&instance, &mut store).await
        }
        .await;
        result.map_err(|e| self.failure(name, e))
    }

    /// Calls made into plugins since the runtime started.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn failure(&self, name: &str, error: wasmtime::Error) -> CallFailure {
        if error.downcast_ref::<DeadlineExceeded>().is_some() {
            return CallFailure::Timeout {
                plugin: name.to_string(),
                deadline: self.limits.deadline,
            };
        }
        CallFailure::Trap {
            plugin: name.to_string(),
            reason: format!("{error:#}"),
        }
    }

    /// Calls `describe` on a freshly compiled plugin and checks the answer.
    pub async fn describe(&self, compiled: &Compiled, file: &str) -> anyhow::Result<PluginInfo> {
        let info = self
            .call(compiled, file, CallScope::bare(), |instance, store| {
                Box::pin(async move {
                    match instance {
                        Instance::V0_2(p) => {
                            p.artifactapi_plugin_format().call_describe(store).await
                        }
                        Instance::V0_1(p) => Ok(super::v0_1::Up::up(
                            p.artifactapi_plugin_format().call_describe(store).await?,
                        )),
                    }
                })
            })
            .await?;
        check_info(&info)?;
        Ok(info)
    }
}

fn check_info(info: &PluginInfo) -> anyhow::Result<()> {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if !token(&info.name) {
        anyhow::bail!("describe returned an invalid name {:?}", info.name);
    }
    if !token(&info.package_type) || info.package_type == crate::config::GENERIC {
        anyhow::bail!(
            "describe returned an invalid package type {:?}",
            info.package_type
        );
    }
    if info.version.is_empty() || info.version.len() > 64 {
        anyhow::bail!("describe returned an invalid version {:?}", info.version);
    }
    for name in &info.environment {
        if name.is_empty() || name.contains(['=', '\0']) {
            anyhow::bail!("describe names an invalid environment variable {name:?}");
        }
    }
    for document in &info.well_known {
        if !token(&document.name) {
            anyhow::bail!(
                "describe returned an invalid well-known document name {:?}",
                document.name
            );
        }
    }
    for pattern in info.mutable_patterns.iter().chain(&info.immutable_patterns) {
        regex::Regex::new(pattern).map_err(|e| {
            anyhow::anyhow!("describe returned an invalid pattern {pattern:?}: {e}")
        })?;
    }
    Ok(())
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
