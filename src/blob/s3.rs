//! Blobs in an S3-compatible object store (Garage, MinIO, AWS S3), through
//! the `object_store` crate.
//!
//! # Layout
//! One immutable object per blob, `PREFIX/blobs/LLLLLLLLLLLLLLLL` (the
//! location in hex). A location is `writer << 40 | n`: `writer` is a number
//! the opener was handed for this session (the composition root allocates
//! it from the metadata store, so two sessions, on one host or many, never
//! share one) and `n` counts this session's puts. Names are never reused,
//! so an object never changes once written: readers and the local cache
//! need no invalidation, and a retried upload of the same name is harmless.
//!
//! # Durability
//! `put` keeps the bytes in memory; `sync` uploads everything put since
//! the last sync, concurrently, and returns once the object store has
//! acknowledged every object (an S3 PUT is durable when it returns). Past
//! [`PENDING_MAX`] bytes, `put` uploads what is pending at once, so memory
//! stays bounded between syncs. A failed upload fails the `sync` and every
//! later one until the core clears it (the contract's sticky failure); the
//! bytes stay pending and are uploaded again by the next sync.
//!
//! # Failures
//! Requests are retried with exponential backoff on transient errors
//! (connection refused or reset, timeouts, 5xx, 429) for at most
//! [`RETRY_FOR`]; then the caller gets an I/O error naming the object and
//! the cause. Nothing is ever half written: an object is whole or absent.
//!
//! # Cache
//! Blobs read are kept in a local folder up to a size limit; the oldest
//! (by last use) are evicted first.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use parking_lot::Mutex;

use super::{BlobCheck, BlobRef, BlobStore, BlobUsage, Reclaim};
use crate::types::{BlobHash, BlobLoc};

/// Bytes put and not yet uploaded past which `put` uploads them.
pub const PENDING_MAX: u64 = 64 << 20;
/// How long a request is retried on transient errors before it fails.
pub const RETRY_FOR: Duration = Duration::from_secs(30);
/// Uploads (and deletes) in flight at once.
const IN_FLIGHT: usize = 16;
/// Bits of a location that count one session's puts.
const COUNTER_BITS: u32 = 40;
/// Largest writer number (locations stay below 2^63, so they fit the
/// metadata store's signed integers).
pub const WRITER_MAX: u64 = (1 << (63 - COUNTER_BITS)) - 1;

/// Where the blobs live and how to reach them. Credentials come from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, or the
/// other variables `object_store` reads), never from a command line.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The endpoint of a store other than AWS (`http://127.0.0.1:3900`);
    /// also read from `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// The region (Garage's default is `garage`); also `AWS_REGION`.
    pub region: Option<String>,
    /// This session's writer number, 1 to [`WRITER_MAX`], unique among
    /// every session that ever writes to this prefix.
    pub writer: u64,
    /// The local cache folder, and its size limit in bytes.
    pub cache: Option<(PathBuf, u64)>,
    /// The key id and secret; `None` reads them from the environment.
    pub credentials: Option<(String, String)>,
    /// How long a request is retried on transient errors ([`RETRY_FOR`]).
    pub retry_for: Duration,
}

impl S3Config {
    /// A store at `url` for writer `writer`, everything else from the
    /// environment or the defaults.
    pub fn new(url: &str, writer: u64) -> S3Config {
        S3Config {
            url: url.to_string(),
            endpoint: None,
            region: None,
            writer,
            cache: None,
            credentials: None,
            retry_for: RETRY_FOR,
        }
    }
}

/// The S3 blob store. See the module doc.
pub struct S3Blobs {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    writer: u64,
    next: AtomicU64,
    /// Put and not yet uploaded.
    pending: Mutex<BTreeMap<u64, Arc<Vec<u8>>>>,
    pending_bytes: AtomicU64,
    cache: Option<DiskCache>,
    /// One upload of pending blobs at a time.
    uploading: Mutex<()>,
    sync_failed: AtomicBool,
    sync_failures: AtomicU64,
}

fn err(what: &str, e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    // The causes too: "builder error" alone says little.
    let mut msg = format!("object store: {what}: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !msg.contains(&c_text) {
            msg.push_str(": ");
            msg.push_str(&c_text);
        }
        cause = c.source();
    }
    io::Error::new(kind, msg)
}

/// `s3://bucket/prefix` split into the bucket URL and the prefix.
fn split_url(url: &str) -> io::Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url:?} is not an s3://BUCKET[/PREFIX] URL"),
        )
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{url:?} names no bucket"),
        ));
    }
    Ok((
        format!("s3://{bucket}"),
        prefix.trim_matches('/').to_string(),
    ))
}

impl S3Blobs {
    /// Opens the store (no request is made until the first blob is read
    /// or written).
    pub fn open(cfg: &S3Config) -> io::Result<S3Blobs> {
        if cfg.writer == 0 || cfg.writer > WRITER_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("writer {} is outside 1..={WRITER_MAX}", cfg.writer),
            ));
        }
        let (bucket, prefix) = split_url(&cfg.url)?;
        let mut b = AmazonS3Builder::from_env().with_url(bucket);
        let endpoint = cfg
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5).min(cfg.retry_for))
            .with_timeout(Duration::from_secs(60));
        if let Some(ep) = endpoint {
            client = client.with_allow_http(ep.starts_with("http://"));
            b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
        }
        if let Some(r) = cfg
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
        {
            b = b.with_region(r);
        }
        if let Some((id, secret)) = &cfg.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 20,
            retry_timeout: cfg.retry_for,
        };
        let store = b
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(|e| err("configuration", e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("queryfs-s3")
            .enable_all()
            .build()?;
        let cache = match &cfg.cache {
            Some((dir, limit)) => Some(DiskCache::open(dir.clone(), *limit)?),
            None => None,
        };
        Ok(S3Blobs {
            rt,
            store: Arc::new(store),
            prefix: ObjPath::from(prefix),
            writer: cfg.writer,
            next: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            pending_bytes: AtomicU64::new(0),
            cache,
            uploading: Mutex::new(()),
            sync_failed: AtomicBool::new(false),
            sync_failures: AtomicU64::new(0),
        })
    }

    fn blobs_dir(&self) -> ObjPath {
        self.prefix.clone().join("blobs")
    }

    fn path(&self, loc: u64) -> ObjPath {
        self.blobs_dir().join(format!("{loc:016x}"))
    }

    /// Uploads what is pending; on success it is no longer pending.
    fn upload_pending(&self) -> io::Result<()> {
        let _one = self.uploading.lock();
        let batch: Vec<(u64, Arc<Vec<u8>>)> = self
            .pending
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let jobs: Vec<(u64, ObjPath, Arc<Vec<u8>>)> = batch
            .into_iter()
            .map(|(k, v)| (k, self.path(k), v))
            .collect();
        let done: Vec<io::Result<u64>> = self.rt.block_on(async {
            futures::stream::iter(jobs)
                .map(|(k, p, v)| {
                    let store = store.clone();
                    async move {
                        let payload = object_store::PutPayload::from(v.as_ref().clone());
                        store
                            .put(&p, payload)
                            .await
                            .map(|_| k)
                            .map_err(|e| err(&format!("uploading {p}"), e))
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await
        });
        let mut first_err = None;
        let mut pending = self.pending.lock();
        for r in done {
            match r {
                Ok(k) => {
                    if let Some(v) = pending.remove(&k) {
                        self.pending_bytes
                            .fetch_sub(v.len() as u64, Ordering::AcqRel);
                        if let Some(c) = &self.cache {
                            c.insert(k, &v);
                        }
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every stored object: location -> size.
    fn list(&self) -> io::Result<BTreeMap<u64, u64>> {
        let dir = self.blobs_dir();
        let objs: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&dir)).try_collect())
            .map_err(|e| err("listing blobs", e))?;
        let mut out = BTreeMap::new();
        for o in objs {
            let name = o.location.filename().unwrap_or_default();
            if let Ok(k) = u64::from_str_radix(name, 16) {
                out.insert(k, o.size);
            }
        }
        for (k, v) in self.pending.lock().iter() {
            out.insert(*k, v.len() as u64);
        }
        Ok(out)
    }
}

impl BlobStore for S3Blobs {
    fn put(&self, _hash: &BlobHash, bytes: &[u8]) -> io::Result<BlobLoc> {
        let n = self.next.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= 1 << COUNTER_BITS {
            return Err(io::Error::other(
                "this session has put 2^40 blobs: reopen the store for a new writer number",
            ));
        }
        let loc = self.writer << COUNTER_BITS | n;
        self.pending.lock().insert(loc, Arc::new(bytes.to_vec()));
        let held = self
            .pending_bytes
            .fetch_add(bytes.len() as u64, Ordering::AcqRel)
            + bytes.len() as u64;
        if held > PENDING_MAX {
            // Uploaded now to bound memory; durable as ever only at sync.
            self.upload_pending()?;
        }
        Ok(BlobLoc(loc))
    }

    fn get(&self, loc: BlobLoc, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let want = buf.len();
        let short = |have: usize| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blob {:016x} holds {have} bytes, {want} asked from {offset}",
                    loc.0
                ),
            )
        };
        let copy = |b: &[u8], buf: &mut [u8]| -> io::Result<()> {
            let from = usize::try_from(offset).unwrap_or(usize::MAX);
            match from.checked_add(buf.len()).filter(|&e| e <= b.len()) {
                Some(end) => {
                    buf.copy_from_slice(&b[from..end]);
                    Ok(())
                }
                None => Err(short(b.len())),
            }
        };
        let held = self.pending.lock().get(&loc.0).cloned();
        if let Some(b) = held {
            return copy(&b, buf);
        }
        if let Some(c) = &self.cache {
            if let Some(b) = c.get(loc.0) {
                return copy(&b, buf);
            }
        }
        let path = self.path(loc.0);
        let got = self
            .rt
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(|e| err(&format!("reading {path}"), e))?;
        if let Some(c) = &self.cache {
            c.insert(loc.0, &got);
        }
        copy(&got, buf)
    }

    fn has(&self, loc: BlobLoc) -> bool {
        if self.pending.lock().contains_key(&loc.0) {
            return true;
        }
        if self.cache.as_ref().is_some_and(|c| c.has(loc.0)) {
            return true;
        }
        let path = self.path(loc.0);
        self.rt.block_on(self.store.head(&path)).is_ok()
    }

    fn delete(&self, loc: BlobLoc) -> io::Result<()> {
        if let Some(v) = self.pending.lock().remove(&loc.0) {
            self.pending_bytes
                .fetch_sub(v.len() as u64, Ordering::AcqRel);
        }
        if let Some(c) = &self.cache {
            c.remove(loc.0);
        }
        let path = self.path(loc.0);
        match self.rt.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err(&format!("deleting {path}"), e)),
        }
    }

    fn sync(&self) -> io::Result<()> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier upload to the object store failed: what was put before it may not be stored",
            ));
        }
        if let Err(e) = self.upload_pending() {
            self.sync_failures.fetch_add(1, Ordering::AcqRel);
            self.sync_failed.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    fn sync_failures(&self) -> u64 {
        self.sync_failures.load(Ordering::Acquire)
    }

    fn clear_sync_failure(&self) {
        self.sync_failed.store(false, Ordering::Release);
    }

    fn verify_reads(&self) -> bool {
        // Names are never reused: what a location names never changes.
        false
    }

    fn check(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<BlobCheck> {
        Ok(super::check_against(&self.list()?, refs, keep))
    }

    fn reclaim(&self, refs: &[BlobRef], keep: &[u64]) -> io::Result<Reclaim> {
        let check = self.check(refs, keep)?;
        if !check.damaged.is_empty() {
            return Ok(Reclaim::Damaged(check.damaged));
        }
        let paths: Vec<(u64, ObjPath)> = check.orphans.iter().map(|&k| (k, self.path(k))).collect();
        for (k, _) in &paths {
            if let Some(v) = self.pending.lock().remove(k) {
                self.pending_bytes
                    .fetch_sub(v.len() as u64, Ordering::AcqRel);
            }
            if let Some(c) = &self.cache {
                c.remove(*k);
            }
        }
        let store = self.store.clone();
        let results: Vec<Result<(), object_store::Error>> = self.rt.block_on(async {
            futures::stream::iter(paths)
                .map(|(_, p)| {
                    let store = store.clone();
                    async move {
                        match store.delete(&p).await {
                            Err(object_store::Error::NotFound { .. }) => Ok(()),
                            r => r,
                        }
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await
        });
        for r in results {
            r.map_err(|e| err("deleting an orphan blob", e))?;
        }
        Ok(Reclaim::Freed(check.orphans.len() as u64))
    }

    fn usage(&self) -> io::Result<BlobUsage> {
        let stored = self.list()?;
        let n = stored.len() as u64;
        Ok(BlobUsage {
            bytes: stored.values().sum(),
            units: n,
            units_used: n,
        })
    }
}

/// A folder of blobs read from the object store, bounded in bytes; the
/// least recently used go first. Blobs never change, so nothing in it is
/// ever stale; a file is written whole (to a temporary name, renamed) or
/// not at all.
struct DiskCache {
    dir: PathBuf,
    limit: u64,
    bytes: AtomicU64,
    evicting: Mutex<()>,
}

impl DiskCache {
    fn open(dir: PathBuf, limit: u64) -> io::Result<DiskCache> {
        std::fs::create_dir_all(&dir)?;
        let mut bytes = 0;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            bytes += e.metadata()?.len();
        }
        Ok(DiskCache {
            dir,
            limit,
            bytes: AtomicU64::new(bytes),
            evicting: Mutex::new(()),
        })
    }

    fn file(&self, loc: u64) -> PathBuf {
        self.dir.join(format!("{loc:016x}"))
    }

    fn has(&self, loc: u64) -> bool {
        self.file(loc).exists()
    }

    fn get(&self, loc: u64) -> Option<Vec<u8>> {
        let p = self.file(loc);
        let b = std::fs::read(&p).ok()?;
        // Last use, for eviction.
        if let Ok(f) = std::fs::File::options().write(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(b)
    }

    fn insert(&self, loc: u64, bytes: &[u8]) {
        if bytes.len() as u64 > self.limit / 4 {
            return;
        }
        let p = self.file(loc);
        if p.exists() {
            return;
        }
        let tmp = self.dir.join(format!("{loc:016x}.tmp"));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &p).is_ok() {
            let now = self.bytes.fetch_add(bytes.len() as u64, Ordering::AcqRel);
            if now + bytes.len() as u64 > self.limit {
                self.evict();
            }
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn remove(&self, loc: u64) {
        let p = self.file(loc);
        if let Ok(m) = std::fs::metadata(&p) {
            if std::fs::remove_file(&p).is_ok() {
                self.bytes.fetch_sub(m.len(), Ordering::AcqRel);
            }
        }
    }

    /// Removes the least recently used files until the cache holds at most
    /// 3/4 of its limit.
    fn evict(&self) {
        let Some(_one) = self.evicting.try_lock() else {
            return;
        };
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort();
        let mut held: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, p) in files {
            if held <= self.limit / 4 * 3 {
                break;
            }
            if std::fs::remove_file(&p).is_ok() {
                held -= len;
            }
        }
        self.bytes.store(held, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(
            split_url("s3://b/some/prefix/").unwrap(),
            ("s3://b".to_string(), "some/prefix".to_string())
        );
        assert_eq!(
            split_url("s3://b").unwrap(),
            ("s3://b".to_string(), String::new())
        );
        assert!(split_url("http://b").is_err());
        assert!(split_url("s3:///x").is_err());
    }

    #[test]
    fn the_cache_stays_under_its_limit_and_keeps_what_was_used_last() {
        let d = tempfile::tempdir().unwrap();
        let c = DiskCache::open(d.path().join("c"), 40_000).unwrap();
        for k in 0..10u64 {
            c.insert(k, &vec![k as u8; 9_000]);
            if k == 2 {
                // Used again: it outlives the ones put before and after.
                std::thread::sleep(Duration::from_millis(20));
                assert!(c.get(0).is_some());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let held: u64 = std::fs::read_dir(d.path().join("c"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(held <= 40_000, "{held} bytes cached");
        assert!(c.get(9).is_some(), "the newest is kept");
        assert!(c.get(1).is_none(), "an old unused one is evicted");
        assert_eq!(c.get(9).unwrap(), vec![9u8; 9_000]);
    }
}
