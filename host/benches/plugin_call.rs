//! Per-request plugin overhead: the latency of `classify` on a fresh
//! instance, sequential and under concurrency, what a cache hit pays
//! instead (the memoised answer: its key and a look-up), and the cost of
//! loading a plugin (compiling it versus reading the on-disk compile cache).
//!
//! Plain `main`, no harness: `cargo bench -p artifactapi --bench plugin_call`.
//! The plugin is `$ARTIFACTAPI_TEST_PLUGINS/alpine.wasm`, or
//! `target/plugins/alpine.wasm` under the workspace root (`make build`).
//!
//! Knobs (environment): `BENCH_CALLS` (sequential calls, default 20000),
//! `BENCH_WARMUP` (default 1000), `BENCH_CONCURRENCY` (comma-separated task
//! counts, default `1,2,8`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifactapi::artifacts::memo::{call_key, Memos};
use artifactapi::plugins::{
    CallScope, Classification, Header, Limits, LoadedPlugin, Mutability, Plugins, RepoContext,
    RepoKind, RequestInfo, Runtime,
};

const PACKAGE: &str = "alpine";
/// Fresh compile cache directories, one cold load each.
const COLD_LOADS: usize = 3;
/// Loads from the compile cache written by the first cold load.
const WARM_LOADS: usize = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn plugin_file() -> PathBuf {
    let dir = std::env::var_os("ARTIFACTAPI_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("plugins")
        });
    dir.join(format!("{PACKAGE}.wasm"))
}

fn repo_ctx() -> RepoContext {
    RepoContext {
        name: "alpine".into(),
        kind: RepoKind::Remote,
        base_url: "http://127.0.0.1:9/alpine".into(),
        public_url: "http://127.0.0.1:8000/api/v1/remote/alpine".into(),
        settings: "{}".into(),
    }
}

fn request() -> RequestInfo {
    let header = |name: &str, value: &str| Header {
        name: name.into(),
        value: value.into(),
    };
    RequestInfo {
        method: "GET".into(),
        path: "v3.20/main/x86_64/busybox-1.36.1-r29.apk".into(),
        query: String::new(),
        headers: vec![
            header("host", "127.0.0.1:8000"),
            header("user-agent", "apk-tools/2.14.4"),
            header("accept", "*/*"),
        ],
    }
}

/// One `classify` on a fresh instance; panics unless the plugin answered
/// as the alpine plugin does for an `.apk`.
async fn classify_once(plugins: &Plugins, plugin: &LoadedPlugin) -> Duration {
    let started = Instant::now();
    let outcome = plugins
        .classify(plugin, CallScope::bare(), repo_ctx(), request())
        .await;
    let elapsed = started.elapsed();
    match outcome {
        Ok(Ok(Classification { mutability, .. })) => {
            assert!(mutability == Mutability::Immutable, "unexpected answer");
        }
        Ok(Err(e)) => panic!("plugin error: {e:?}"),
        Err(e) => panic!("call failed: {e}"),
    }
    elapsed
}

/// Builds a runtime over `cache`, loads `plugins_dir` and returns the time
/// `reload` took (compile or cache read, link, `describe`).
async fn load(cache: &Path, plugins_dir: &Path) -> (Plugins, Duration) {
    let runtime = Runtime::new(cache, Limits::default()).expect("runtime");
    let plugins = Plugins::new(runtime, plugins_dir).expect("plugins");
    let started = Instant::now();
    plugins.reload(None).await;
    let elapsed = started.elapsed();
    assert!(
        plugins.for_package(PACKAGE).is_some(),
        "the {PACKAGE} plugin did not load: {:?}",
        plugins
            .status()
            .into_iter()
            .filter_map(|s| s.last_error)
            .collect::<Vec<_>>()
    );
    (plugins, elapsed)
}

/// `calls` calls spread over `tasks` tasks: the wall time and every call's
/// latency.
async fn concurrent(
    plugins: &Arc<Plugins>,
    plugin: &Arc<LoadedPlugin>,
    tasks: usize,
    calls: usize,
) -> (Duration, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let plugins = plugins.clone();
            let plugin = plugin.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    mine.push(classify_once(&plugins, &plugin).await);
                    // A request task in the server awaits I/O between plugin
                    // calls. Without this, a task runs calls back to back
                    // until tokio's coop budget forces a yield, and the call
                    // that yields is timed with the wait behind the others.
                    tokio::task::yield_now().await;
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for handle in handles {
        all.extend(handle.await.expect("task"));
    }
    (started.elapsed(), all)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

struct Summary {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
    max: Duration,
}

fn summarize(samples: &mut [Duration]) -> Summary {
    assert!(!samples.is_empty());
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64) * q).ceil() as usize;
        samples[i.clamp(1, samples.len()) - 1]
    };
    let total: Duration = samples.iter().sum();
    Summary {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        mean: total / samples.len() as u32,
        max: samples[samples.len() - 1],
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

async fn run() {
    let source = plugin_file();
    if !source.is_file() {
        eprintln!(
            "plugin_call: {} is missing; run `make build` (or set ARTIFACTAPI_TEST_PLUGINS)",
            source.display()
        );
        std::process::exit(2);
    }
    let calls = env_usize("BENCH_CALLS", 20_000).max(1);
    let warmup = env_usize("BENCH_WARMUP", 1_000);
    let concurrency: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,2,8".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();

    let tmp = tempfile::tempdir().expect("temp dir");
    let plugins_dir = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins_dir).expect("plugins dir");
    std::fs::copy(&source, plugins_dir.join(format!("{PACKAGE}.wasm"))).expect("copy plugin");
    let wasm_size = std::fs::metadata(&source).map(|m| m.len()).unwrap_or(0);

    // Loading: every cold load gets an empty cache; warm loads reuse the
    // first one's cache with a new Runtime (a new engine, as after a restart).
    let mut cold = Vec::new();
    for i in 0..COLD_LOADS {
        let (plugins, elapsed) = load(&tmp.path().join(format!("cache-{i}")), &plugins_dir).await;
        drop(plugins);
        cold.push(elapsed);
    }
    let mut warm = Vec::new();
    for _ in 0..WARM_LOADS {
        let (plugins, elapsed) = load(&tmp.path().join("cache-0"), &plugins_dir).await;
        drop(plugins);
        warm.push(elapsed);
    }

    let (plugins, _) = load(&tmp.path().join("cache-0"), &plugins_dir).await;
    let plugins = Arc::new(plugins);
    let plugin = plugins.for_package(PACKAGE).expect("loaded");

    // Warm up at the highest concurrency too, so that every pool slot the
    // concurrent runs use has been touched once.
    for _ in 0..warmup {
        classify_once(&plugins, &plugin).await;
    }
    let widest = concurrency.iter().copied().max().unwrap_or(1);
    concurrent(&plugins, &plugin, widest, warmup).await;

    // Sequential: one call at a time, each timed.
    let mut samples = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        samples.push(classify_once(&plugins, &plugin).await);
    }
    let seq_wall = started.elapsed();
    let seq = summarize(&mut samples);

    // Memoised: what a hit does instead of calling the plugin, with the
    // request as plugins see it (the Accept header only).
    let memos = Memos::new(1 << 20);
    let seen = RequestInfo {
        headers: request()
            .headers
            .into_iter()
            .filter(|h| h.name == "accept")
            .collect(),
        ..request()
    };
    let answer = plugins
        .classify(&plugin, CallScope::bare(), repo_ctx(), seen.clone())
        .await
        .expect("call")
        .expect("answer");
    let repo = repo_ctx();
    memos.classify.insert(
        call_key("classify", &plugin.sha256, &repo, &seen).finish(),
        answer,
    );
    let mut memo_samples = Vec::with_capacity(calls);
    let started = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let key = call_key("classify", &plugin.sha256, &repo, &seen).finish();
        let found = memos.classify.get(&key);
        memo_samples.push(t.elapsed());
        assert!(found.is_some());
    }
    let memo_wall = started.elapsed();
    let memo = summarize(&mut memo_samples);

    // Concurrent: N tasks share `calls` calls.
    let mut rows = Vec::new();
    for &tasks in &concurrency {
        let (wall, mut all) = concurrent(&plugins, &plugin, tasks, calls).await;
        let summary = summarize(&mut all);
        rows.push((tasks, calls as f64 / wall.as_secs_f64(), summary));
    }

    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!();
    println!(
        "### Plugin call overhead (`classify`, {PACKAGE}.wasm {} KiB, fresh instance per call)",
        wasm_size / 1024
    );
    println!();
    println!(
        "{calls} calls per row after {warmup} warm-up calls (sequential, then over \
         {widest} tasks), multi-thread tokio runtime ({workers} workers), `Limits::default()` (pooling allocator, 64 instances)."
    );
    println!(
        "Concurrent rows: N tasks share the same number of calls and yield to the scheduler \
         between calls; a latency includes any wait for a worker thread."
    );
    println!();
    println!("| | p50 µs | p90 µs | p99 µs | mean µs | max µs | calls/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| sequential | {} | {} | {} | {} | {} | {:.0} |",
        us(seq.p50),
        us(seq.p90),
        us(seq.p99),
        us(seq.mean),
        us(seq.max),
        calls as f64 / seq_wall.as_secs_f64()
    );
    for (tasks, rate, s) in &rows {
        println!(
            "| {tasks} concurrent task{} | {} | {} | {} | {} | {} | {rate:.0} |",
            if *tasks == 1 { "" } else { "s" },
            us(s.p50),
            us(s.p90),
            us(s.p99),
            us(s.mean),
            us(s.max),
        );
    }
    println!(
        "| memoised (a cache hit: key and look-up) | {} | {} | {} | {} | {} | {:.0} |",
        us(memo.p50),
        us(memo.p90),
        us(memo.p99),
        us(memo.mean),
        us(memo.max),
        calls as f64 / memo_wall.as_secs_f64()
    );
    println!();
    println!("### Plugin load (`Plugins::reload`: compile or cache read, link, `describe`)");
    println!();
    println!("| | runs | median ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (label, samples) in [
        ("first load (compile, write cache)", &mut cold),
        ("new Runtime, on-disk compile cache", &mut warm),
    ] {
        let mid = median(samples);
        println!(
            "| {label} | {} | {} | {} | {} |",
            samples.len(),
            ms(mid),
            ms(samples[0]),
            ms(samples[samples.len() - 1]),
        );
    }
    println!();
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}
