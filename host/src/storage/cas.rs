//! Content-addressable storage over `object_store`.
//!
//! Objects live under `blobs/sha256/<2 hex>/<64 hex>`. Every write first lands
//! in a spool file on local disk while its digest is computed; only a verified
//! spool is committed, so a crash or a cut stream never leaves a visible
//! partial object. With the local filesystem backend the spool directory lies
//! inside the store and the commit is a rename; with a remote backend the
//! spool is uploaded and then removed.

use std::fmt;
use std::io::{self, Read as _, Seek as _};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, WriteMultipart};
use sha2::{Digest as _, Sha256};

use super::copies::LocalCopies;

/// Bytes read from disk per step when streaming a file.
pub const READ_CHUNK: usize = 256 * 1024;
/// Objects up to this size are kept in memory once read, by digest.
const SMALL_OBJECT: u64 = 64 * 1024;
/// Memory for small objects, in bytes.
const SMALL_OBJECTS_BYTES: u64 = 32 << 20;
/// Bytes gathered from a stream before they are written to a spool.
const WRITE_CHUNK: usize = 256 * 1024;

/// A sha256 content digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:<hex>` or bare hex.
    pub fn parse(text: &str) -> Option<Digest> {
        let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
        if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// The digest of a byte slice.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    fn key(&self) -> StorePath {
        let hex = self.hex();
        StorePath::from(format!("blobs/sha256/{}/{}", &hex[..2], hex))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A stored object's bytes: read whole, a local file read in large steps,
/// or a stream.
pub enum BlobBody {
    /// The whole requested range, read at once (small objects).
    Bytes(Bytes),
    /// The first bytes of the range, then this many more from the file's
    /// position on (a local file opened for this body alone).
    File(Bytes, std::fs::File, u64),
    /// A stream from a remote backend.
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl BlobBody {
    /// The body as a stream of chunks.
    pub fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        match self {
            BlobBody::Bytes(bytes) => futures::stream::once(async { Ok(bytes) }).boxed(),
            BlobBody::File(first, file, rest) => futures::stream::once(async { Ok(first) })
                .chain(sequential_stream(file, rest))
                .boxed(),
            BlobBody::Stream(stream) => stream,
        }
    }
}

/// Reads `len` bytes at `offset` of `file`, failing if it is shorter.
fn read_exact_at(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stored object is shorter than recorded",
        ));
    }
    Ok(buf.freeze())
}

/// Reads `len` bytes at `offset` off the async workers.
pub async fn read_at(file: Arc<std::fs::File>, offset: u64, len: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || read_exact_at(&file, offset, len))
        .await
        .map_err(io::Error::other)?
}

/// Reads the next `len` bytes from `file`'s position, failing if it ends
/// first. The buffer is not zeroed first (unlike a positional read's).
fn read_chunk(file: &std::fs::File, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stored object is shorter than recorded",
        ));
    }
    Ok(Bytes::from(buf))
}

/// Streams the next `len` bytes of a file in `READ_CHUNK` steps.
fn sequential_stream(
    file: std::fs::File,
    len: u64,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold((Some(file), len), |(file, left)| async move {
        let Some(file) = file.filter(|_| left > 0) else {
            return Ok(None);
        };
        let step = left.min(READ_CHUNK as u64);
        let (file, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = read_chunk(&file, step as usize);
            (file, chunk)
        })
        .await
        .map_err(io::Error::other)?;
        Ok(Some((chunk?, (Some(file), left - step))))
    })
}

/// Streams a byte range of a file in `READ_CHUNK` steps.
pub fn file_stream(
    file: Arc<std::fs::File>,
    range: Range<u64>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(range.start, move |offset| {
        let file = file.clone();
        let end = range.end;
        async move {
            if offset >= end {
                return Ok(None);
            }
            let len = (end - offset).min(READ_CHUNK as u64) as usize;
            let chunk = read_at(file, offset, len).await?;
            Ok(Some((chunk, offset + len as u64)))
        }
    })
}

/// Where spool files go and how they are committed.
enum Staging {
    /// The spool directory is `staging/` inside a local store: commit renames.
    InStore,
    /// The spool directory is a local folder outside the store: commit uploads.
    Upload,
}

/// The content-addressable store.
pub struct Cas {
    store: Arc<dyn ObjectStore>,
    spool_dir: PathBuf,
    staging: Staging,
    /// The folder of a local store, whose objects are opened directly.
    local_root: Option<PathBuf>,
    /// Small objects read lately: content-addressed, so never out of date,
    /// and a hit costs no step off the async workers.
    small: moka::sync::Cache<Digest, Bytes>,
    /// Local copies of a remote store's blobs.
    copies: Option<Arc<LocalCopies>>,
}

fn small_objects() -> moka::sync::Cache<Digest, Bytes> {
    moka::sync::Cache::builder()
        .max_capacity(SMALL_OBJECTS_BYTES)
        .weigher(|_: &Digest, bytes: &Bytes| u32::try_from(bytes.len() + 64).unwrap_or(u32::MAX))
        .build()
}

/// A spool file being written: bytes are hashed and written at once.
pub struct Spool {
    file: Arc<std::fs::File>,
    path: PathBuf,
    hasher: Option<Sha256>,
    pending: BytesMut,
    written: u64,
}

impl Spool {
    /// The spool's open file, for readers that follow the writer.
    pub fn file(&self) -> Arc<std::fs::File> {
        self.file.clone()
    }

    /// Bytes written to disk so far (readable by followers).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes; they reach the disk in large steps. Returns true when
    /// the bytes written to disk grew.
    pub async fn append(&mut self, data: &[u8]) -> io::Result<bool> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= WRITE_CHUNK {
            self.flush().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes whatever is pending.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        let len = chunk.len() as u64;
        let file = self.file.clone();
        let mut hasher = self.hasher.take().expect("spool used after failure");
        let offset = self.written;
        let hasher = tokio::task::spawn_blocking(move || {
            file.write_all_at(&chunk, offset)?;
            hasher.update(&chunk);
            Ok::<_, io::Error>(hasher)
        })
        .await
        .map_err(io::Error::other)??;
        self.hasher = Some(hasher);
        self.written += len;
        Ok(())
    }

    /// Flushes and returns the digest and size of everything written.
    pub async fn finish(mut self) -> io::Result<Finished> {
        self.flush().await?;
        let digest = Digest(
            self.hasher
                .take()
                .expect("spool finished twice")
                .finalize()
                .into(),
        );
        Ok(Finished {
            path: std::mem::take(&mut self.path),
            digest,
            size: self.written,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A complete spool awaiting commit.
pub struct Finished {
    path: PathBuf,
    /// The content digest.
    pub digest: Digest,
    /// The content length.
    pub size: u64,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Cas {
    /// A store on the local filesystem under `dir`.
    pub fn local(dir: &Path) -> anyhow::Result<Cas> {
        std::fs::create_dir_all(dir.join("staging"))?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Cas {
            store: Arc::new(store),
            spool_dir: dir.join("staging"),
            staging: Staging::InStore,
            local_root: Some(dir.to_path_buf()),
            small: small_objects(),
            copies: None,
        })
    }

    /// A store on any `object_store` backend, spooling under `spool_dir`,
    /// keeping local copies of the blobs it reads and writes in `copies`
    /// (on the same file system as the spool).
    pub fn remote(
        store: Arc<dyn ObjectStore>,
        spool_dir: &Path,
        copies: Option<Arc<LocalCopies>>,
    ) -> anyhow::Result<Cas> {
        std::fs::create_dir_all(spool_dir)?;
        Ok(Cas {
            store,
            spool_dir: spool_dir.to_path_buf(),
            staging: Staging::Upload,
            local_root: None,
            small: small_objects(),
            copies,
        })
    }

    /// Opens a new spool file.
    pub async fn spool(&self) -> io::Result<Spool> {
        let name = uuid::Uuid::new_v4().to_string();
        let path = self.spool_dir.join(name);
        let open_path = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(open_path)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(Spool {
            file: Arc::new(file),
            path,
            hasher: Some(Sha256::new()),
            pending: BytesMut::with_capacity(WRITE_CHUNK),
            written: 0,
        })
    }

    /// Stores a verified spool under its digest. Content that is already
    /// present is replaced by the identical bytes (atomically), which
    /// renews its last-modified time: the garbage collector spares blobs
    /// younger than its grace period, and a blob committed again must count
    /// as young until the metadata record that references it is written.
    pub async fn commit(&self, finished: Finished) -> anyhow::Result<Digest> {
        let digest = finished.digest.clone();
        self.place(finished, digest.key(), true).await?;
        Ok(digest)
    }

    /// Moves a finished spool to `key`: a rename within the local store, an
    /// upload to a remote one (after which the spool file becomes the
    /// blob's local copy when `keep_copy`).
    async fn place(
        &self,
        mut finished: Finished,
        key: StorePath,
        keep_copy: bool,
    ) -> anyhow::Result<()> {
        let path = std::mem::take(&mut finished.path);
        match self.staging {
            Staging::InStore => {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow::anyhow!("bad spool name"))?;
                let from = StorePath::from(format!("staging/{name}"));
                if let Err(e) = self.store.rename(&from, &key).await {
                    let _ = std::fs::remove_file(&path);
                    return Err(e.into());
                }
            }
            Staging::Upload => {
                let result = self.upload(&path, &key).await;
                match (&result, &self.copies) {
                    (Ok(()), Some(copies)) if keep_copy => {
                        copies.adopt(&path, &finished.digest, finished.size)
                    }
                    _ => {
                        let _ = tokio::fs::remove_file(&path).await;
                    }
                }
                result?;
            }
        }
        Ok(())
    }

    async fn upload(&self, path: &Path, key: &StorePath) -> anyhow::Result<()> {
        let file = Arc::new(std::fs::File::open(path)?);
        let len = file.metadata()?.len();
        let upload = self.store.put_multipart(key).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut chunks = file_stream(file, 0..len).boxed();
        while let Some(chunk) = chunks.next().await {
            writer.wait_for_capacity(4).await?;
            writer.put(chunk?);
        }
        writer.finish().await?;
        Ok(())
    }

    /// Stores a verified spool under `key` (any path outside `blobs/`),
    /// where it stays until [`Cas::delete_key`] or [`Cas::promote`]: the
    /// staged parts of an upload in progress.
    pub async fn commit_as(&self, finished: Finished, key: &str) -> anyhow::Result<()> {
        self.place(finished, StorePath::from(key), false).await
    }

    /// Moves an object staged under `key` whose bytes are known to have
    /// `digest` into the store under that digest.
    /// Like [`Cas::commit`] it renews the object's age (a part may have been
    /// staged long before the upload completes), so the garbage collector
    /// spares it until the record that references it is written.
    pub async fn promote(&self, key: &str, digest: &Digest) -> anyhow::Result<()> {
        if let Some(root) = &self.local_root {
            let path = root.join(key);
            tokio::task::spawn_blocking(move || {
                std::fs::File::options()
                    .write(true)
                    .open(path)?
                    .set_modified(SystemTime::now())
            })
            .await??;
        }
        self.store
            .rename(&StorePath::from(key), &digest.key())
            .await?;
        Ok(())
    }

    /// Streams an object staged under `key`; None when absent.
    pub async fn open_key(
        &self,
        key: &str,
    ) -> anyhow::Result<Option<BoxStream<'static, io::Result<Bytes>>>> {
        let result = match self.store.get(&StorePath::from(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let range = result.range.clone();
        Ok(Some(match result.payload {
            GetResultPayload::File(file, _) => file_stream(Arc::new(file), range).boxed(),
            GetResultPayload::Stream(stream) => stream.map(|r| r.map_err(io::Error::other)).boxed(),
        }))
    }

    /// Removes an object staged under `key`; absent is fine.
    pub async fn delete_key(&self, key: &str) -> anyhow::Result<()> {
        match self.store.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores a small object held in memory.
    pub async fn put_bytes(&self, data: Bytes) -> anyhow::Result<Digest> {
        let digest = Digest::of(&data);
        self.store.put(&digest.key(), data.into()).await?;
        Ok(digest)
    }

    /// The size of a stored object, or None when absent.
    pub async fn size(&self, digest: &Digest) -> anyhow::Result<Option<u64>> {
        if let Some(bytes) = self.small.get(digest) {
            return Ok(Some(bytes.len() as u64));
        }
        if let Some(path) = self.copies.as_ref().and_then(|c| c.find(digest)) {
            if let Ok(meta) = tokio::fs::metadata(path).await {
                return Ok(Some(meta.len()));
            }
        }
        match self.store.head(&digest.key()).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a stored object, or a range of it; None when absent. A small
    /// object read lately comes from memory. From a local store this is one
    /// step off the async workers, which also reads the first
    /// [`READ_CHUNK`] bytes: a small object is read whole, and kept.
    pub async fn open(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> anyhow::Result<Option<BlobBody>> {
        if let Some(bytes) = self.small.get(digest) {
            let len = bytes.len() as u64;
            let range = range.map_or(0..len, |r| r.start.min(len)..r.end.min(len));
            return Ok(Some(BlobBody::Bytes(
                bytes.slice(range.start as usize..range.end as usize),
            )));
        }
        if let Some(root) = &self.local_root {
            let path = root.join(digest.key().as_ref());
            let opened = tokio::task::spawn_blocking(move || open_local(&path, range)).await??;
            if let Some((body, whole)) = opened {
                if let Some(bytes) = whole {
                    self.small.insert(digest.clone(), bytes);
                }
                return Ok(Some(body));
            }
            return Ok(None);
        }
        if let Some(path) = self.copies.as_ref().and_then(|c| c.find(digest)) {
            let wanted = range.clone();
            let opened = tokio::task::spawn_blocking(move || open_local(&path, wanted)).await??;
            match opened {
                Some((body, whole)) => {
                    if let Some(bytes) = whole {
                        self.small.insert(digest.clone(), bytes);
                    }
                    return Ok(Some(body));
                }
                None => self.copies.as_ref().map_or((), |c| c.remove(digest)),
            }
        }
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..Default::default()
        };
        let result = match self.store.get_opts(&digest.key(), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if range.is_none() && result.meta.size <= SMALL_OBJECT {
            // Small enough to keep: the next read asks the backend nothing.
            let whole = result.bytes().await?;
            self.small.insert(digest.clone(), whole.clone());
            return Ok(Some(BlobBody::Bytes(whole)));
        }
        if let Some(copies) = &self.copies {
            copies.fetch(self.store.clone(), digest.key(), digest.clone());
        }
        let range = result.range.clone();
        Ok(Some(match result.payload {
            GetResultPayload::File(file, _) => {
                BlobBody::Stream(file_stream(Arc::new(file), range).boxed())
            }
            GetResultPayload::Stream(stream) => {
                BlobBody::Stream(stream.map(|r| r.map_err(io::Error::other)).boxed())
            }
        }))
    }

    /// Reads a whole object into memory, refusing objects over `cap` bytes.
    pub async fn read_capped(&self, digest: &Digest, cap: u64) -> anyhow::Result<Option<Bytes>> {
        let Some(size) = self.size(digest).await? else {
            return Ok(None);
        };
        if size > cap {
            anyhow::bail!("object of {size} bytes is over the {cap} byte limit");
        }
        let Some(body) = self.open(digest, None).await? else {
            return Ok(None);
        };
        let mut out = BytesMut::with_capacity(size as usize);
        let mut stream = body.into_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(out.freeze()))
    }

    /// Reads `len` bytes of an object from `offset` into memory (fewer at
    /// its end); None when absent.
    pub async fn read_range(
        &self,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<Option<Bytes>> {
        let Some(body) = self.open(digest, Some(offset..offset + len)).await? else {
            return Ok(None);
        };
        let mut out = BytesMut::with_capacity(len.min(READ_CHUNK as u64) as usize);
        let mut stream = body.into_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(out.freeze()))
    }

    /// Removes a stored object.
    pub async fn delete(&self, digest: &Digest) -> anyhow::Result<()> {
        self.small.invalidate(digest);
        if let Some(copies) = &self.copies {
            copies.remove(digest);
        }
        match self.store.delete(&digest.key()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored blob with its size and last-modified time, as the
    /// backend lists them (in no particular order). Objects under `blobs/`
    /// whose names are not digests are skipped.
    pub fn blobs(&self) -> BoxStream<'static, anyhow::Result<StoredBlob>> {
        let prefix = StorePath::from("blobs/sha256");
        self.store
            .list(Some(&prefix))
            .filter_map(|item| async move {
                match item {
                    Ok(meta) => {
                        let digest = Digest::parse(meta.location.filename()?)?;
                        Some(Ok(StoredBlob {
                            digest,
                            size: meta.size,
                            modified: system_time(meta.last_modified.timestamp()),
                        }))
                    }
                    Err(e) => Some(Err(e.into())),
                }
            })
            .boxed()
    }

    /// When a stored blob was last written, or None when absent.
    pub async fn modified(&self, digest: &Digest) -> anyhow::Result<Option<SystemTime>> {
        match self.store.head(&digest.key()).await {
            Ok(meta) => Ok(Some(system_time(meta.last_modified.timestamp()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The spool files on disk now: writes in progress, and files a crash
    /// left behind.
    pub async fn spool_files(&self) -> io::Result<Vec<SpoolFile>> {
        let dir = self.spool_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let meta = match entry.metadata() {
                    Ok(meta) if meta.is_file() => meta,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                files.push(SpoolFile {
                    path: entry.path(),
                    size: meta.len(),
                    modified: meta.modified()?,
                });
            }
            Ok(files)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Removes a spool file listed by [`Cas::spool_files`].
    pub async fn remove_spool_file(&self, file: &SpoolFile) -> io::Result<()> {
        match tokio::fs::remove_file(&file.path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Opens a file of a local store and reads its first bytes, and the whole
/// file when it is small; None when absent.
fn open_local(
    path: &Path,
    range: Option<Range<u64>>,
) -> io::Result<Option<(BlobBody, Option<Bytes>)>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size <= SMALL_OBJECT {
        let whole = read_chunk(&file, size as usize)?;
        let range = range.map_or(0..size, |r| r.start.min(size)..r.end.min(size));
        let body = BlobBody::Bytes(whole.slice(range.start as usize..range.end as usize));
        return Ok(Some((body, Some(whole))));
    }
    let range = match range {
        Some(range) => range.start.min(size)..range.end.min(size),
        None => 0..size,
    };
    let first_len = (range.end - range.start).min(READ_CHUNK as u64);
    (&file).seek(io::SeekFrom::Start(range.start))?;
    let first = read_chunk(&file, first_len as usize)?;
    let rest = range.end - range.start - first_len;
    let body = if rest == 0 {
        BlobBody::Bytes(first)
    } else {
        BlobBody::File(first, file, rest)
    };
    Ok(Some((body, None)))
}

/// A blob as [`Cas::blobs`] lists it.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// When it was last written (to the second).
    pub modified: SystemTime,
}

/// A spool file as [`Cas::spool_files`] lists it.
#[derive(Debug, Clone)]
pub struct SpoolFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its length in bytes.
    pub size: u64,
    /// When it was last written to.
    pub modified: SystemTime,
}

fn system_time(secs: i64) -> SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spool_commit_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::local(dir.path()).unwrap();
        let mut spool = cas.spool().await.unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        for part in data.chunks(10_000) {
            spool.append(part).await.unwrap();
        }
        let finished = spool.finish().await.unwrap();
        assert_eq!(finished.size, data.len() as u64);
        assert_eq!(finished.digest, Digest::of(&data));
        let digest = cas.commit(finished).await.unwrap();
        let back = cas.read_capped(&digest, u64::MAX).await.unwrap().unwrap();
        assert_eq!(&back[..], &data[..]);
        let staged = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count();
        assert_eq!(staged, 0, "the spool is gone after commit");
    }

    #[tokio::test]
    async fn dropped_spool_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::local(dir.path()).unwrap();
        let mut spool = cas.spool().await.unwrap();
        spool.append(&[1u8; 300_000]).await.unwrap();
        drop(spool);
        let staged = std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count();
        assert_eq!(staged, 0);
    }

    #[tokio::test]
    async fn a_remote_backend_gets_the_spool_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(object_store::memory::InMemory::new());
        let cas = Cas::remote(store, &dir.path().join("spool"), None).unwrap();
        let mut spool = cas.spool().await.unwrap();
        let data = vec![42u8; 600_000];
        spool.append(&data).await.unwrap();
        let digest = cas.commit(spool.finish().await.unwrap()).await.unwrap();
        assert_eq!(digest, Digest::of(&data));
        let back = cas.read_capped(&digest, u64::MAX).await.unwrap().unwrap();
        assert_eq!(&back[..], &data[..]);
        let left = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
        assert_eq!(left, 0, "the spool is removed after the upload");
    }

    #[tokio::test]
    async fn a_remote_backends_blobs_are_kept_and_served_as_local_copies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(object_store::memory::InMemory::new());
        let copies_dir = dir.path().join("copies");
        let copies = LocalCopies::new(&copies_dir, 64 << 20).unwrap();
        let cas = Cas::remote(store.clone(), &dir.path().join("spool"), Some(copies)).unwrap();
        let copy_count = || std::fs::read_dir(&copies_dir).unwrap().count();

        // Committed here: the verified spool file becomes the copy.
        let data = vec![7u8; 300_000];
        let mut spool = cas.spool().await.unwrap();
        spool.append(&data).await.unwrap();
        let digest = cas.commit(spool.finish().await.unwrap()).await.unwrap();
        assert_eq!(copy_count(), 1);
        store.delete(&digest.key()).await.unwrap();
        let back = cas.read_capped(&digest, u64::MAX).await.unwrap().unwrap();
        assert_eq!(&back[..], &data[..], "served from the local copy");
        cas.delete(&digest).await.unwrap();
        assert_eq!(copy_count(), 0, "a deleted blob's copy goes with it");

        // Committed elsewhere: read from the store once, copied meanwhile.
        let other = vec![9u8; 200_000];
        let other_digest = Digest::of(&other);
        store
            .put(&other_digest.key(), Bytes::from(other.clone()).into())
            .await
            .unwrap();
        let back = cas
            .read_capped(&other_digest, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back[..], &other[..]);
        for _ in 0..100 {
            if copy_count() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.delete(&other_digest.key()).await.unwrap();
        let back = cas
            .read_capped(&other_digest, u64::MAX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back[..], &other[..], "the background copy serves it");

        // Bytes in the store that are not what their name says are not kept.
        let forged = Digest::of(b"something else");
        store
            .put(&forged.key(), Bytes::from(vec![1u8; 100_000]).into())
            .await
            .unwrap();
        cas.read_capped(&forged, u64::MAX).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            copy_count(),
            1,
            "a copy whose digest does not match was kept"
        );
    }

    #[test]
    fn digest_parsing() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.to_string()), Some(d.clone()));
        assert_eq!(Digest::parse(&d.hex().to_uppercase()), Some(d));
        assert_eq!(Digest::parse("sha256:xyz"), None);
    }
}
