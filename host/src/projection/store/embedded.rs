//! The embedded view store: the projections' documents, in a redb file of their own
//! (`views.redb`). Views are derived data: they can always be rebuilt from the log, so
//! they are kept apart from it and never slow its commits down.
//!
//! Each projection has a record (its live generation and, during a rebuild, the one being
//! built) and one table of documents per generation, `view/{projection}/{generation}`. A
//! batch's documents and the generation's new cursor commit in one transaction, so after a
//! crash a view is exactly what its cursor says. Most commits skip the fsync
//! ([`Durability::None`]): a crash may take a view back a little, never apart, and the
//! events after its cursor are handled again. One commit a second is made durable.

use super::{BatchCommit, ViewRecord, ViewStore, Views};
use crate::runtime::{DocumentReader, Writes};
use crate::store::embedded::file::{StoreFile, needs_reopen, open_as_it_is};
use crate::store::{Position, StoreError};
use async_trait::async_trait;
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// projection name → [`ViewRecord`].
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("projections");

/// A generation's documents, as a read transaction sees them.
type Documents = ReadOnlyTable<&'static str, &'static str>;

/// How often a view commit is made durable.
const DURABLE_EVERY: Duration = Duration::from_secs(1);

fn table_name(projection: &str, generation: u32) -> String {
    format!("view/{projection}/{generation}")
}

fn decode(name: &str, bytes: &[u8]) -> Result<ViewRecord, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("view record {name}: {e}")))
}

fn encode(record: &ViewRecord) -> Vec<u8> {
    rmp_serde::to_vec(record).expect("encode a view record")
}

#[derive(Clone)]
pub struct EmbeddedViews {
    file: Arc<StoreFile>,
    last_durable: Arc<Mutex<Instant>>,
}

impl EmbeddedViews {
    /// Open (or create) the view store at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedViews, StoreError> {
        let file = Arc::new(StoreFile::open(path)?);
        let txn = file.get()?.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(EmbeddedViews { file, last_durable: Arc::new(Mutex::new(Instant::now())) })
    }

    /// Run a write on the file; after an I/O error, open the file again (redb refuses
    /// everything after one until then), so the caller's retry can succeed.
    fn writing<T>(&self, write: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // A file an earlier reopen could not open (the disk still failing) is tried again here,
        // off the threads that answer HTTP (the projections write on blocking threads).
        self.file.open_if_closed(&open_as_it_is)?;
        let reopens = self.file.reopens();
        let db = self.file.get()?;
        let written = write(&db);
        drop(db);
        if let Err(error) = &written
            && needs_reopen(error)
        {
            match self.file.reopen_after(reopens) {
                Ok(()) => tracing::warn!("opened the view store again after an I/O error: {error}"),
                Err(reopen) => tracing::error!("the view store could not be opened again: {reopen}"),
            }
        }
        written
    }

    fn put_record_on(db: &Database, name: &str, record: &ViewRecord) -> Result<(), StoreError> {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            let before = table.get(name)?.map(|v| decode(name, v.value())).transpose()?;
            table.insert(name, encode(record).as_slice())?;
            if let Some(before) = before {
                for old in [Some(before.live), before.next].into_iter().flatten() {
                    let kept = old.id == record.live.id || record.next.is_some_and(|n| n.id == old.id);
                    if !kept {
                        txn.delete_table(TableDefinition::<&str, &str>::new(&table_name(name, old.id)))?;
                    }
                }
            }
            // Empty tables, so readers of a new generation find them.
            txn.open_table(TableDefinition::<&str, &str>::new(&table_name(name, record.live.id)))?;
            if let Some(next) = record.next {
                txn.open_table(TableDefinition::<&str, &str>::new(&table_name(name, next.id)))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn commit_on(
        &self,
        db: &Database,
        name: &str,
        generation: u32,
        writes: &Writes,
        from: Position,
        cursor: Position,
    ) -> Result<BatchCommit, StoreError> {
        let mut txn = db.begin_write()?;
        let durable = {
            let mut last = self.last_durable.lock().expect("durability clock lock");
            let due = last.elapsed() >= DURABLE_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        if !durable {
            txn.set_durability(Durability::None).map_err(|e| StoreError::CommitFailed(e.to_string()))?;
        }
        {
            let mut records = txn.open_table(RECORDS)?;
            let Some(mut record) = records.get(name)?.map(|v| decode(name, v.value())).transpose()? else {
                return Ok(BatchCommit::GenerationGone);
            };
            let Some(target) = record.generation_mut(generation) else {
                return Ok(BatchCommit::GenerationGone);
            };
            if target.cursor != from {
                return Ok(BatchCommit::CursorMoved(target.cursor));
            }
            target.cursor = cursor;
            records.insert(name, encode(&record).as_slice())?;
            let mut documents =
                txn.open_table(TableDefinition::<&str, &str>::new(&table_name(name, generation)))?;
            for (key, document) in writes {
                match document {
                    Some(document) => documents.insert(key.as_str(), document.as_str())?,
                    None => documents.remove(key.as_str())?,
                };
            }
        }
        txn.commit()?;
        Ok(BatchCommit::Done)
    }

    fn switch_on(db: &Database, name: &str, generation: u32) -> Result<Option<ViewRecord>, StoreError> {
        let txn = db.begin_write()?;
        let switched = {
            let mut records = txn.open_table(RECORDS)?;
            let Some(mut record) = records.get(name)?.map(|v| decode(name, v.value())).transpose()? else {
                return Ok(None);
            };
            let Some(next) = record.next.filter(|n| n.id == generation) else { return Ok(None) };
            let old = std::mem::replace(&mut record.live, next);
            record.next = None;
            records.insert(name, encode(&record).as_slice())?;
            txn.delete_table(TableDefinition::<&str, &str>::new(&table_name(name, old.id)))?;
            record
        };
        txn.commit()?;
        Ok(Some(switched))
    }

    /// The live generation's cursor and documents, read in one transaction.
    fn live(&self, name: &str) -> Result<Option<(Position, Documents)>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let records = read.open_table(RECORDS)?;
        let Some(record) = records.get(name)?.map(|v| decode(name, v.value())).transpose()? else {
            return Ok(None);
        };
        let documents =
            read.open_table(TableDefinition::<&str, &str>::new(&table_name(name, record.live.id)))?;
        Ok(Some((record.live.cursor, documents)))
    }

    /// This store behind the view store contract.
    pub fn shared(self) -> Views {
        std::sync::Arc::new(self)
    }
}

#[async_trait]
impl ViewStore for EmbeddedViews {
    /// Every projection's record.
    async fn records(&self) -> Result<BTreeMap<String, ViewRecord>, StoreError> {
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(RECORDS)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (name, record) = entry?;
            out.insert(name.value().to_owned(), decode(name.value(), record.value())?);
        }
        Ok(out)
    }

    /// Store a projection's record as given (a new projection, a rebuild starting); a
    /// generation that is no longer in it loses its documents.
    async fn put_record(&self, name: &str, record: &ViewRecord) -> Result<(), StoreError> {
        self.writing(|db| Self::put_record_on(db, name, record))
    }

    /// Commit a batch: `writes` into generation `generation`'s documents and its cursor moved
    /// from `from` to `cursor`, in one transaction. Refused when the generation is no longer
    /// the projection's (a rebuild replaced it meanwhile), and when its stored cursor is not
    /// `from`: the batch was read for a view the file no longer holds (a reopen after an I/O
    /// error took back commits that were not yet durable), so committing it would skip the
    /// events in between.
    async fn commit(
        &self,
        name: &str,
        generation: u32,
        writes: &Writes,
        from: Position,
        cursor: Position,
    ) -> Result<BatchCommit, StoreError> {
        self.writing(|db| self.commit_on(db, name, generation, writes, from, cursor))
    }

    /// Make every commit so far durable (at shutdown).
    async fn flush(&self) -> Result<(), StoreError> {
        self.writing(|db| {
            let txn = db.begin_write()?;
            txn.open_table(RECORDS)?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Make the generation being built the live one, and drop the old one's documents.
    async fn switch(&self, name: &str, generation: u32) -> Result<Option<ViewRecord>, StoreError> {
        self.writing(|db| Self::switch_on(db, name, generation))
    }

    /// The live generation's document under `key`, and the position the view had handled
    /// when it was read. `None` for a projection with no view yet.
    async fn document(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Option<(Position, Option<String>)>, StoreError> {
        let Some((cursor, documents)) = self.live(name)? else { return Ok(None) };
        let document = documents.get(key)?.map(|v| v.value().to_owned());
        Ok(Some((cursor, document)))
    }

    /// The live generation's keys after `after`, at most `limit`, leaving out the
    /// projection's own bookkeeping (keys starting with `_`); and the view's position.
    async fn keys(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Position, Vec<String>)>, StoreError> {
        let Some((cursor, documents)) = self.live(name)? else { return Ok(None) };
        let mut keys = Vec::new();
        let range = match after {
            Some(after) => {
                documents.range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?
            }
            None => documents.range::<&str>(..)?,
        };
        for entry in range {
            let (key, _) = entry?;
            if key.value().starts_with('_') {
                continue;
            }
            keys.push(key.value().to_owned());
            if keys.len() >= limit {
                break;
            }
        }
        Ok(Some((cursor, keys)))
    }

    /// How many documents a generation holds (bookkeeping included).
    async fn document_count(&self, name: &str, generation: u32) -> Result<u64, StoreError> {
        let read = self.file.get()?.begin_read()?;
        match read.open_table(TableDefinition::<&str, &str>::new(&table_name(name, generation))) {
            Ok(documents) => Ok(documents.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(error) => Err(error.into()),
        }
    }

    /// The committed documents of a generation, for a batch's guest to read.
    async fn reader(&self, name: &str, generation: u32) -> Result<Box<dyn DocumentReader>, StoreError> {
        // The projections' batches start here, on blocking threads: the owner's place to
        // open a file an earlier reopen could not.
        self.file.open_if_closed(&open_as_it_is)?;
        let read = self.file.get()?.begin_read()?;
        let table = read.open_table(TableDefinition::<&str, &str>::new(&table_name(name, generation)))?;
        Ok(Box::new(CommittedDocuments { table }))
    }
}

/// A generation's documents as of the start of a batch.
struct CommittedDocuments {
    table: Documents,
}

impl DocumentReader for CommittedDocuments {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        self.table.get(key).map(|v| v.map(|v| v.value().to_owned())).map_err(|e| e.to_string())
    }
}
