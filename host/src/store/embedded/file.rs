//! The store's redb file, and opening it again after an I/O error.
//!
//! redb latches an I/O error: once a write or an fsync has failed, every later operation on
//! that `Database` fails with `PreviousIo` until it is closed and opened again. A disk that
//! was full for a moment, or a storage device that timed out once, would otherwise make the
//! host fail every commit until someone restarts it. So everything that reads or writes the
//! file goes through a [`StoreFile`], which the writer can reopen: it takes the database
//! away from new readers, waits for the readers that hold it to finish, closes it, and opens
//! the file again (redb recovers it to its last commit).
//!
//! The file is opened through a backend that times every fsync; in debug builds (what `cargo
//! test` builds) the fault injection can also make it fail (`CAIRN_FAULTS=io-error=...`).

use crate::store::StoreError;
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A redb file that can be closed and opened again while the host runs.
///
/// Only its owners open it again (the writer thread for `events.redb`, the projections'
/// writes for `views.redb`), never a reader: opening runs redb's repair, which takes as
/// long as the file is large, and must not hold up a thread that answers HTTP.
pub(crate) struct StoreFile {
    path: PathBuf,
    /// `None` while it is being reopened (or could not be).
    current: RwLock<Option<Arc<Database>>>,
    /// One reopen at a time.
    reopening: Mutex<()>,
    /// How many times the file was opened again.
    reopens: AtomicU64,
    /// When an owner last tried to open a closed file again.
    last_attempt: Mutex<Option<Instant>>,
    /// Why the file is closed until the host restarts (an fsync failed on a commit that
    /// reached it).
    sealed: RwLock<Option<String>>,
}

/// A check of a reopened file before anyone may read it: `Some(reason)` seals it instead.
pub(crate) type Gate<'a> = &'a dyn Fn(&Database) -> Result<Option<String>, StoreError>;

/// How often a closed file is tried again by its owners.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long a reopen waits for the readers that still hold the old database.
const READERS_GONE: Duration = Duration::from_secs(5);

impl StoreFile {
    /// Open (or create) the file.
    ///
    /// A file sealed by an earlier run (see [`StoreFile::seal`]) is first written out anew:
    /// after a failed fsync the kernel may hold pages it will never write, and writes of the
    /// same pages are not retried by a later fsync, so the file is copied (which reads what
    /// the kernel holds, the same as the host read), the copy fsynced, and renamed over it.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        if sealed_marker(path).exists() {
            rewrite(path).map_err(|e| {
                StoreError::from(redb::Error::Io(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} was sealed after a failed fsync and could not be written anew: {e}",
                        path.display()
                    ),
                )))
            })?;
        }
        let database = open_database(path)?;
        Ok(StoreFile {
            path: path.to_owned(),
            current: RwLock::new(Some(Arc::new(database))),
            reopening: Mutex::new(()),
            reopens: AtomicU64::new(0),
            last_attempt: Mutex::new(None),
            sealed: RwLock::new(None),
        })
    }

    /// Close the file for good in this run: every later `get` fails with `reason`, nothing
    /// opens it again, and the next run writes it out anew before it opens it. A marker
    /// beside the file carries that over the restart.
    pub(crate) fn seal(&self, reason: &str) {
        *self.sealed.write().expect("store file seal lock") = Some(reason.to_owned());
        self.current.write().expect("store file lock").take();
        if let Err(error) = std::fs::write(sealed_marker(&self.path), reason) {
            tracing::error!(
                "could not write the marker that has the next start write {} anew: {error}",
                self.path.display()
            );
        }
    }

    /// Why the file is sealed, if it is.
    pub(crate) fn sealed(&self) -> Option<String> {
        self.sealed.read().expect("store file seal lock").clone()
    }

    /// The database, to begin a transaction on.
    ///
    /// # Errors
    /// `Unavailable` while the file is closed after an I/O error (its owner opens it again).
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current.read().expect("store file lock").clone().ok_or_else(|| match self.sealed() {
            Some(reason) => StoreError::Unavailable(reason),
            None => StoreError::Unavailable("the store is being reopened after an I/O error".to_owned()),
        })
    }

    /// Close the database and open the file again. Readers in the meantime get
    /// `Unavailable`; a reader that holds the old database past [`READERS_GONE`] makes this
    /// fail (the file stays open, and the next reopen tries again). `gate` sees the reopened
    /// file before any reader does.
    pub(crate) fn reopen(&self, gate: Gate<'_>) -> Result<(), StoreError> {
        let _one_at_a_time = self.reopening.lock().expect("store file reopen lock");
        let old = self.current.write().expect("store file lock").take();
        if let Some(old) = old {
            let deadline = Instant::now() + READERS_GONE;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() > deadline {
                    // Put it back rather than leak it: the next reopen waits again.
                    *self.current.write().expect("store file lock") = Some(old);
                    return Err(StoreError::Unavailable(
                        "the store could not be reopened: readers still hold it".to_owned(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // The last handle: dropping it closes the file and releases its lock.
            drop(old);
        }
        self.open_now(gate)
    }

    /// For an owner: open the file if an earlier reopen left it closed (the disk still
    /// failing then), at most once a second. `Ok` when it is open.
    pub(crate) fn open_if_closed(&self, gate: Gate<'_>) -> Result<(), StoreError> {
        if self.is_open() {
            return Ok(());
        }
        {
            let mut last = self.last_attempt.lock().expect("store file attempt lock");
            if last.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
                return self.get().map(drop);
            }
            *last = Some(Instant::now());
        }
        let _one_at_a_time = self.reopening.lock().expect("store file reopen lock");
        if self.is_open() {
            return Ok(());
        }
        self.open_now(gate)
    }

    fn open_now(&self, gate: Gate<'_>) -> Result<(), StoreError> {
        if let Some(reason) = self.sealed() {
            return Err(StoreError::Unavailable(reason));
        }
        let database = open_database(&self.path)?;
        if let Some(reason) = gate(&database)? {
            drop(database);
            self.seal(&reason);
            return Err(StoreError::Unavailable(reason));
        }
        *self.current.write().expect("store file lock") = Some(Arc::new(database));
        self.reopens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many times the file was opened again: read it before an operation, and pass it
    /// to [`StoreFile::reopen_after`] if the operation failed.
    pub(crate) fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::SeqCst)
    }

    /// Reopen after a failure seen at `reopens`, unless another caller has reopened the file
    /// since (several callers meeting the same failure reopen it once).
    pub(crate) fn reopen_after(&self, reopens: u64) -> Result<(), StoreError> {
        if self.reopens() != reopens && self.is_open() {
            return Ok(());
        }
        self.reopen(&open_as_it_is)
    }

    /// Whether the file is open now.
    pub(crate) fn is_open(&self) -> bool {
        self.current.read().expect("store file lock").is_some()
    }
}

/// A [`Gate`] that lets any reopened file be read.
pub(crate) fn open_as_it_is(_: &Database) -> Result<Option<String>, StoreError> {
    Ok(None)
}

/// The file beside a store that says the next start must write it anew.
fn sealed_marker(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".sealed");
    path.with_file_name(name)
}

/// Write a sealed file anew: copy it, fsync the copy, rename it over the file, fsync the
/// folder, and only then drop the marker.
fn rewrite(path: &Path) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".rewrite");
    let copy = path.with_file_name(name);
    tracing::warn!("{} was sealed after a failed fsync: writing it anew before opening it", path.display());
    std::fs::copy(path, &copy)?;
    std::fs::File::open(&copy)?.sync_all()?;
    std::fs::rename(&copy, path)?;
    if let Some(folder) = path.parent() {
        std::fs::File::open(folder)?.sync_all()?;
    }
    std::fs::remove_file(sealed_marker(path))
}

/// Whether a failure leaves redb's database unusable until it is opened again.
pub(crate) fn needs_reopen(error: &StoreError) -> bool {
    use redb::Error;
    matches!(error.engine::<Error>(), Some(Error::Io(_) | Error::PreviousIo | Error::Backend(_)))
}

/// Opens the file through [`disk::Disk`], which times every fsync and, in debug builds, fails
/// while the fault injection says so.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::from(redb::Error::Io(e)))?;
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let backend = disk::Disk { inner: redb::backends::FileBackend::new(file)?, name };
    Ok(Database::builder().create_with_backend(backend)?)
}

mod disk {
    //! redb's file backend, with every fsync timed (`cairn_fsync_duration_seconds`, so an
    //! operator can tell a slow disk from a slow host) and, in debug builds, writes that fail
    //! while the fault injection says so.

    use redb::{BackendError, StorageBackend};
    use std::ops::Bound;
    use std::time::Instant;

    #[derive(Debug)]
    pub(super) struct Disk {
        pub(super) inner: redb::backends::FileBackend,
        /// The file's name, the metric's label.
        pub(super) name: String,
    }

    /// A write the fault injection refuses (never in release builds).
    fn failing() -> std::io::Result<()> {
        #[cfg(debug_assertions)]
        if crate::faults::io_error_armed() {
            return Err(std::io::Error::other("fault injection: io-error (the disk refused a write)"));
        }
        Ok(())
    }

    /// An fsync the fault injection fails (never in release builds).
    fn failing_fsync() -> std::io::Result<()> {
        failing()?;
        #[cfg(debug_assertions)]
        if crate::faults::fsync_error_armed() {
            return Err(std::io::Error::other("fault injection: fsync-error (the disk failed an fsync)"));
        }
        Ok(())
    }

    impl StorageBackend for Disk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            failing()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            failing_fsync()?;
            let started = Instant::now();
            let synced = self.inner.sync_data();
            crate::telemetry::fsync(&self.name, started.elapsed());
            synced
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            failing()?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> Result<(), std::io::Error> {
            self.inner.close()
        }
        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(start, end)
        }
        fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_range(start, end)
        }
        fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_shared_range(start, end)
        }
        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(start, end)
        }
        fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.query_lock_range(start, end)
        }
    }
}
