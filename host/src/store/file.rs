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
//! In debug builds (what `cargo test` builds) the file is opened through a backend that the
//! fault injection can make fail (`CAIRN_FAULTS=io-error=...`); release builds open it as
//! redb does.

use super::StoreError;
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A redb file that can be closed and opened again while the host runs.
pub(crate) struct StoreFile {
    path: PathBuf,
    /// `None` while it is being reopened (or could not be).
    current: RwLock<Option<Arc<Database>>>,
    /// How many times the file was opened again; one reopen at a time.
    reopens: Mutex<u64>,
    /// When a reader last tried to open a closed file again.
    last_attempt: Mutex<Option<Instant>>,
}

/// How often a closed file is tried again by its readers.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long a reopen waits for the readers that still hold the old database.
const READERS_GONE: Duration = Duration::from_secs(5);

impl StoreFile {
    /// Open (or create) the file.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let database = open_database(path)?;
        Ok(StoreFile {
            path: path.to_owned(),
            current: RwLock::new(Some(Arc::new(database))),
            reopens: Mutex::new(0),
            last_attempt: Mutex::new(None),
        })
    }

    /// The database, to begin a transaction on. When an earlier reopen could not open the
    /// file again (the disk still failing), this tries again, at most once a second.
    ///
    /// # Errors
    /// `Unavailable` while the file is being reopened after an I/O error.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(database) = self.current.read().expect("store file lock").clone() {
            return Ok(database);
        }
        let due = {
            let mut last = self.last_attempt.lock().expect("store file attempt lock");
            let due = last.is_none_or(|at| at.elapsed() >= RETRY_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due && let Err(error) = self.open_if_closed() {
            tracing::warn!(path = %self.path.display(), "the store file still cannot be opened: {error}");
        }
        self.current.read().expect("store file lock").clone().ok_or_else(|| {
            StoreError::Unavailable("the store is being reopened after an I/O error".to_owned())
        })
    }

    /// Close the database and open the file again. Readers in the meantime get
    /// `Unavailable`; a reader that holds the old database past [`READERS_GONE`] makes this
    /// fail (the file stays closed, and the next reopen tries again).
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut reopens = self.reopens.lock().expect("store file reopen lock");
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
        let database = open_database(&self.path)?;
        *self.current.write().expect("store file lock") = Some(Arc::new(database));
        *reopens += 1;
        Ok(())
    }

    /// Open the file if it is closed (an earlier reopen could not open it), unless someone is
    /// reopening it now.
    fn open_if_closed(&self) -> Result<(), StoreError> {
        let Ok(mut reopens) = self.reopens.try_lock() else { return Ok(()) };
        if self.is_open() {
            return Ok(());
        }
        let database = open_database(&self.path)?;
        *self.current.write().expect("store file lock") = Some(Arc::new(database));
        *reopens += 1;
        Ok(())
    }

    /// How many times the file was opened again: read it before an operation, and pass it
    /// to [`StoreFile::reopen_after`] if the operation failed.
    pub(crate) fn reopens(&self) -> u64 {
        *self.reopens.lock().expect("store file reopen lock")
    }

    /// Reopen after a failure seen at `reopens`, unless another caller has reopened the file
    /// since (several callers meeting the same failure reopen it once).
    pub(crate) fn reopen_after(&self, reopens: u64) -> Result<(), StoreError> {
        if self.reopens() != reopens && self.is_open() {
            return Ok(());
        }
        self.reopen()
    }

    /// Whether the file is open now.
    pub(crate) fn is_open(&self) -> bool {
        self.current.read().expect("store file lock").is_some()
    }
}

/// Whether a failure leaves redb's database unusable until it is opened again.
pub(crate) fn needs_reopen(error: &StoreError) -> bool {
    use redb::Error;
    matches!(error, StoreError::Storage(Error::Io(_) | Error::PreviousIo | Error::Backend(_)))
}

#[cfg(not(debug_assertions))]
fn open_database(path: &Path) -> Result<Database, StoreError> {
    Ok(Database::create(path)?)
}

#[cfg(debug_assertions)]
fn open_database(path: &Path) -> Result<Database, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::Storage(redb::Error::Io(e)))?;
    let backend = injected::Faultable { inner: redb::backends::FileBackend::new(file)? };
    Ok(Database::builder().create_with_backend(backend)?)
}

#[cfg(debug_assertions)]
mod injected {
    //! A file backend whose writes fail while the fault injection says so.

    use redb::{BackendError, StorageBackend};
    use std::ops::Bound;

    #[derive(Debug)]
    pub(super) struct Faultable {
        pub(super) inner: redb::backends::FileBackend,
    }

    fn failing() -> std::io::Result<()> {
        if crate::faults::io_error_armed() {
            return Err(std::io::Error::other("fault injection: io-error (the disk refused a write)"));
        }
        Ok(())
    }

    impl StorageBackend for Faultable {
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
            failing()?;
            self.inner.sync_data()
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
