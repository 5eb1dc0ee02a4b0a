//! The `artifactapi` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand, ValueEnum};

use artifactapi::gc::{collect, schedule, GcOptions};
use artifactapi::plugins::Limits;
use artifactapi::server::{app, start, ServeOptions};
use artifactapi::storage::{BackendArgs, DatabaseConfig, Storage};
use artifactapi::tls::{Certificates, TlsListener};

/// A caching proxy and package repository server with WebAssembly format plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "ARTIFACTAPI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the repositories of a remotes.yaml (log level: RUST_LOG, default info).
    Serve(Box<ServeArgs>),
    /// Remove blobs no metadata record references, and spool files a crash
    /// left behind; safe while a server runs on the same data folder.
    Gc(GcArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The repositories file; reloaded when it changes.
    #[arg(long, env = "ARTIFACTAPI_CONFIG", default_value = "remotes.yaml")]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "ARTIFACTAPI_LISTEN", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// PEM certificate chain (leaf first): listen with TLS. Picked up again
    /// when the file changes.
    #[arg(long, env = "ARTIFACTAPI_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ARTIFACTAPI_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Folder for what each process keeps: the embedded backends' files
    /// (blobs, metadata.db), the spool of writes in progress, the plugin
    /// compile cache.
    #[arg(long, env = "ARTIFACTAPI_DATA", default_value = "./data")]
    data: PathBuf,
    #[command(flatten)]
    backends: BackendArgs,
    /// Folder of plugin components (*.wasm); watched for changes.
    #[arg(long, env = "ARTIFACTAPI_PLUGINS", default_value = "target/plugins")]
    plugins: PathBuf,
    /// Wall-clock limit of one plugin call, in milliseconds.
    #[arg(long, env = "ARTIFACTAPI_PLUGIN_TIMEOUT_MS", default_value_t = 5000)]
    plugin_timeout_ms: u64,
    /// Memory limit of one plugin instance, in MiB.
    #[arg(long, env = "ARTIFACTAPI_PLUGIN_MEMORY_MB", default_value_t = 512)]
    plugin_memory_mb: usize,
    /// Largest index document handed to a plugin, in MiB.
    #[arg(long, env = "ARTIFACTAPI_INDEX_MAX_MB", default_value_t = 128)]
    index_max_mb: u64,
    /// Plugin instances that may run at once.
    #[arg(long, env = "ARTIFACTAPI_PLUGIN_INSTANCES", default_value_t = 64)]
    plugin_instances: u32,
    /// Memory for rendered index documents (each form kept with its gzip
    /// copy), in MiB; the least used are dropped beyond it.
    #[arg(long, env = "ARTIFACTAPI_INDEX_MEMO_MB", default_value_t = 64)]
    index_memo_mb: u64,
    /// Minutes between garbage collections of unreferenced blobs; 0 turns them off.
    #[arg(long, env = "ARTIFACTAPI_GC_INTERVAL_MINUTES", default_value_t = 60)]
    gc_interval_minutes: u64,
    /// Unreferenced blobs younger than this many minutes are kept.
    #[arg(long, env = "ARTIFACTAPI_GC_GRACE_MINUTES", default_value_t = 60)]
    gc_grace_minutes: u64,
    /// Blob uploads (docker push) idle this many minutes are abandoned and
    /// their staged data removed by the garbage collector.
    #[arg(
        long,
        env = "ARTIFACTAPI_UPLOAD_EXPIRY_MINUTES",
        default_value_t = 1440
    )]
    upload_expiry_minutes: u64,
    /// Armored OpenPGP private key the server signs with (a local terraform
    /// repository's SHA256SUMS); unset: a key generated on first start and
    /// kept in the metadata store, shared by every replica.
    #[arg(long, env = "TF_SIGNING_KEY_PATH")]
    signing_key_path: Option<PathBuf>,
    /// Passphrase of --signing-key-path.
    #[arg(long, env = "TF_SIGNING_KEY_PASSPHRASE", hide_env_values = true)]
    signing_key_passphrase: Option<String>,
}

#[derive(clap::Args)]
struct GcArgs {
    /// The data folder of the server.
    #[arg(long, env = "ARTIFACTAPI_DATA", default_value = "./data")]
    data: PathBuf,
    #[command(flatten)]
    backends: BackendArgs,
    /// Unreferenced blobs younger than this many minutes are kept.
    #[arg(long, env = "ARTIFACTAPI_GC_GRACE_MINUTES", default_value_t = 60)]
    gc_grace_minutes: u64,
    /// Blob uploads idle this many minutes are abandoned.
    #[arg(
        long,
        env = "ARTIFACTAPI_UPLOAD_EXPIRY_MINUTES",
        default_value_t = 1440
    )]
    upload_expiry_minutes: u64,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

/// jemalloc: the server allocates and frees buffers on every request from
/// several threads, where it is faster than the system allocator and gives
/// memory back once a load has passed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(60))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let options = ServeOptions {
        config: args.config,
        backends: args.backends.resolve(&args.data)?,
        data: args.data,
        plugins: args.plugins,
        limits: Limits {
            deadline: Duration::from_millis(args.plugin_timeout_ms),
            memory: args.plugin_memory_mb << 20,
            index_size: args.index_max_mb << 20,
            instances: args.plugin_instances,
        },
        index_memo_bytes: args.index_memo_mb << 20,
        signing_key: args.signing_key_path,
        signing_key_passphrase: args.signing_key_passphrase,
    };
    let running = start(&options).await?;
    let _gc = (args.gc_interval_minutes > 0).then(|| {
        schedule(
            running.app.storage.clone(),
            minutes(args.gc_interval_minutes),
            minutes(args.gc_grace_minutes),
            minutes(args.upload_expiry_minutes),
        )
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    if !args.listen.ip().is_loopback() && !artifactapi::auth::enabled(&running.app.config.load()) {
        tracing::warn!(
            listen = %args.listen,
            "no auth section in the configuration: writes are open to anyone who can reach this address"
        );
    }
    tracing::info!(
        listen = %args.listen,
        config = %options.config.display(),
        data = %options.data.display(),
        database = %options.backends.database.redacted(),
        plugins = %options.plugins.display(),
        gc_interval_minutes = args.gc_interval_minutes,
        tls = args.tls_cert.is_some(),
        "artifactapi serving"
    );
    let router = app(running.app.clone());
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let certificates = Certificates::load(cert, key)?;
            let _watchers = certificates.watch()?;
            let listener = TlsListener::new(listener, certificates.server_config()?, no_delay)?;
            // Links in documents lead back over https unless a proxy in
            // front says otherwise.
            let router = router.layer(axum::middleware::map_request(
                |mut request: axum::extract::Request| async move {
                    request
                        .headers_mut()
                        .entry("x-forwarded-proto")
                        .or_insert(axum::http::HeaderValue::from_static("https"));
                    request
                },
            ));
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        _ => {
            axum::serve(listener.tap_io(|tcp| no_delay(tcp)), router)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
    }
    if let Err(e) = running.app.storage.meta.flush_hits().await {
        tracing::warn!(error = %format!("{e:#}"), "cannot record the last hits");
    }
    if let Err(e) = running.app.stats.share().await {
        tracing::warn!(error = %format!("{e:#}"), "cannot add the last counts to the cluster's");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Small responses go out at once rather than waiting on the client's
/// delayed ACK.
fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
    }
}

async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let backends = args.backends.resolve(&args.data)?;
    if let DatabaseConfig::Sqlite(path) = &backends.database {
        anyhow::ensure!(
            path.is_file(),
            "{} does not exist: not a data folder",
            path.display()
        );
    }
    let storage = Storage::open(&backends, &args.data).await?;
    let options = GcOptions {
        grace: minutes(args.gc_grace_minutes),
        upload_expiry: minutes(args.upload_expiry_minutes),
        dry_run: args.dry_run,
    };
    let report = collect(&storage, &options).await?;
    println!("{report}");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Gc(args) => gc(args).await,
    }
}
