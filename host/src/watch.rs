//! Debounced folder watching: several filesystem events from one write (or
//! one copy of several files) become one reload.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before the reload runs.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches `dir` (not recursively) and runs `reload` once events for paths
/// that pass `filter` have settled. Keep the returned watcher alive.
pub fn watch<F, Fut>(
    dir: &Path,
    filter: impl Fn(&Path) -> bool + Send + 'static,
    reload: F,
) -> anyhow::Result<RecommendedWatcher>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                // Reading a file (as a reload does) is an event too.
                let access = matches!(event.kind, notify::EventKind::Access(_));
                if !access && event.paths.iter().any(|p| filter(p)) {
                    let _ = tx.send(());
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watch error"),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            reload().await;
        }
    });
    Ok(watcher)
}

/// A filter matching one file by name, however the event spells its folder.
pub fn file_named(path: &Path) -> impl Fn(&Path) -> bool + Send + 'static {
    let name: Option<PathBuf> = path.file_name().map(PathBuf::from);
    move |p: &Path| {
        name.as_deref()
            .is_some_and(|n| p.file_name() == Some(n.as_os_str()))
    }
}
