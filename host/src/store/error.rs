use super::Version;

/// A failure of the storage engine or of the data in it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, a full disk, a damaged file, a lost connection to the
    /// database). Nothing of the failed operation is visible: the transaction did not commit.
    #[error("storage failure: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A record could not be decoded: the file was written by an incompatible version.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A group commit failed; nothing of it is stored.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// A commit failed in a way that may have left it durable (an fsync that failed after
    /// the data reached the disk) and the file could not be read again to tell.
    #[error("the commit failed and whether it was stored is not known: {0}")]
    OutcomeUnknown(String),
    /// An earlier read failed for a caller waiting on the same work.
    #[error("the event store could not be read: {0}")]
    Unavailable(String),
    /// The writer thread has stopped (the host is shutting down).
    #[error("the event store is closed")]
    Closed,
}

macro_rules! storage_error_from {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Storage(Box::new(redb::Error::from(error)))
            }
        }
    )*};
}

storage_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::Storage(Box::new(error))
    }
}

impl StoreError {
    /// The engine's own error, if this is a storage failure of that engine.
    pub fn engine<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            StoreError::Storage(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// Why an append was not stored. Handle `VersionConflict` by reloading the stream (HTTP
/// 409 when the client asked for a version); `Store` is a host failure (HTTP 500).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("expected the stream at version {expected}, but it is at {actual}")]
    VersionConflict { expected: Version, actual: Version },
    #[error(transparent)]
    Store(#[from] StoreError),
}
