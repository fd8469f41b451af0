//! The view store on PostgreSQL, in the database that holds the log: each projection's
//! record in `cairn.view_records`, every generation's documents in `cairn.view_documents`.
//! A batch's documents and its cursor commit in one transaction with
//! `synchronous_commit = off`: PostgreSQL flushes it a moment later, so a crash may take a
//! view back a little, never apart (the record's cursor and the documents move together).

use super::{BatchCommit, ViewRecord, ViewStore, Views};
use crate::runtime::{DocumentReader, Writes};
use crate::store::postgres::{big, connection};
use crate::store::{Position, StoreError};
use async_trait::async_trait;
use deadpool_postgres::{Pool, Transaction};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_postgres::IsolationLevel;

/// One document of one generation.
const DOCUMENT: &str =
    "SELECT document FROM cairn.view_documents WHERE projection = $1 AND generation = $2 AND key = $3";

/// In a cluster: the background lease this host holds now (its incarnation and epoch), or
/// `None` when it does not run the projections.
pub type BackgroundFence = Arc<dyn Fn() -> Option<(String, i64)> + Send + Sync>;

pub struct PostgresViews {
    pool: Pool,
    fence: Option<BackgroundFence>,
}

impl PostgresViews {
    /// The view store in the database `pool` connects to (its tables come with the store's
    /// schema).
    pub fn shared(pool: Pool) -> Views {
        Arc::new(PostgresViews { pool, fence: None })
    }

    /// The same, for a host of a cluster: every write checks in its own transaction that
    /// this host still holds the background lease at the epoch it holds it now, so a host
    /// that was paused past it writes nothing over the views of the one that took it.
    pub fn fenced(pool: Pool, fence: BackgroundFence) -> Views {
        Arc::new(PostgresViews { pool, fence: Some(fence) })
    }

    async fn check_fence(&self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        let Some(fence) = &self.fence else { return Ok(()) };
        let refused = || StoreError::CommitFailed("this host no longer runs the projections".to_owned());
        let (owner, epoch) = fence().ok_or_else(refused)?;
        // `FOR KEY SHARE`: a takeover (`FOR UPDATE`) waits until this write has ended, while the
        // holder's own renewals (which change no key) never wait for it. A host paused in here
        // holds the row two seconds at most.
        txn.batch_execute("SET LOCAL idle_in_transaction_session_timeout = '2s'").await?;
        let statement = txn
            .prepare_cached(
                "SELECT 1 FROM cairn.leases WHERE lease = -1 AND owner = $1 AND epoch = $2 \
                 AND expires_at > clock_timestamp() FOR KEY SHARE",
            )
            .await?;
        txn.query_opt(&statement, &[&owner, &epoch]).await?.map(|_| ()).ok_or_else(refused)
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<ViewRecord, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("view record {name}: {e}")))
}

fn encode(record: &ViewRecord) -> Vec<u8> {
    rmp_serde::to_vec(record).expect("encode a view record")
}

/// The record of `name`, locked until the transaction ends.
async fn locked_record(txn: &Transaction<'_>, name: &str) -> Result<Option<ViewRecord>, StoreError> {
    let statement =
        txn.prepare_cached("SELECT record FROM cairn.view_records WHERE name = $1 FOR UPDATE").await?;
    let row = txn.query_opt(&statement, &[&name]).await?;
    row.map(|row| decode(name, row.try_get(0)?)).transpose()
}

async fn store_record(txn: &Transaction<'_>, name: &str, record: &ViewRecord) -> Result<(), StoreError> {
    let statement = txn
        .prepare_cached(
            "INSERT INTO cairn.view_records (name, record) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
        )
        .await?;
    txn.execute(&statement, &[&name, &encode(record)]).await?;
    Ok(())
}

/// Drop the documents of every generation of `name` but `kept`.
async fn drop_generations(txn: &Transaction<'_>, name: &str, kept: &[i32]) -> Result<(), StoreError> {
    let statement = txn
        .prepare_cached("DELETE FROM cairn.view_documents WHERE projection = $1 AND generation <> ALL($2)")
        .await?;
    txn.execute(&statement, &[&name, &kept]).await?;
    Ok(())
}

fn generations(record: &ViewRecord) -> Vec<i32> {
    std::iter::once(record.live.id).chain(record.next.map(|n| n.id)).map(|id| id as i32).collect()
}

/// A read-only transaction on one snapshot, for a view's record and its documents together:
/// a switch in between cannot show the old generation's cursor with nothing of it.
async fn snapshot(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, StoreError> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// The live generation of `name` and its cursor, read in `txn`.
async fn live(txn: &Transaction<'_>, name: &str) -> Result<Option<(i32, Position)>, StoreError> {
    let statement = txn.prepare_cached("SELECT record FROM cairn.view_records WHERE name = $1").await?;
    let row = txn.query_opt(&statement, &[&name]).await?;
    let record = row.map(|row| decode(name, row.try_get(0)?)).transpose()?;
    Ok(record.map(|r| (r.live.id as i32, r.live.cursor)))
}

#[async_trait]
impl ViewStore for PostgresViews {
    async fn records(&self) -> Result<BTreeMap<String, ViewRecord>, StoreError> {
        let client = connection(&self.pool).await?;
        let rows = client.query("SELECT name, record FROM cairn.view_records", &[]).await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get(0)?;
                let record = decode(&name, row.try_get(1)?)?;
                Ok((name, record))
            })
            .collect()
    }

    async fn put_record(&self, name: &str, record: &ViewRecord) -> Result<(), StoreError> {
        let mut client = connection(&self.pool).await?;
        let txn = client.transaction().await?;
        // A new projection's first record any host may make (they make the same one, and the
        // first stays); a record that is there is the background host's to change.
        if locked_record(&txn, name).await?.is_none() {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.view_records (name, record) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .await?;
            txn.execute(&statement, &[&name, &encode(record)]).await?;
            txn.commit().await?;
            return Ok(());
        }
        self.check_fence(&txn).await?;
        store_record(&txn, name, record).await?;
        drop_generations(&txn, name, &generations(record)).await?;
        txn.commit().await?;
        Ok(())
    }

    async fn commit(
        &self,
        name: &str,
        generation: u32,
        writes: &Writes,
        from: Position,
        cursor: Position,
    ) -> Result<BatchCommit, StoreError> {
        let mut client = connection(&self.pool).await?;
        let txn = client.transaction().await?;
        txn.batch_execute("SET LOCAL synchronous_commit = off").await?;
        let Some(mut record) = locked_record(&txn, name).await? else {
            return Ok(BatchCommit::GenerationGone);
        };
        // Always after the record's lock, as everywhere here: one order, no deadlock.
        self.check_fence(&txn).await?;
        let Some(target) = record.generation_mut(generation) else { return Ok(BatchCommit::GenerationGone) };
        if target.cursor != from {
            return Ok(BatchCommit::CursorMoved(target.cursor));
        }
        target.cursor = cursor;
        let (mut put_keys, mut put_documents, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
        for (key, document) in writes {
            match document {
                Some(document) => {
                    put_keys.push(key.as_str());
                    put_documents.push(document.as_str());
                }
                None => deleted.push(key.as_str()),
            }
        }
        let generation = generation as i32;
        let put = async {
            if put_keys.is_empty() {
                return Ok(0);
            }
            let statement = txn
                .prepare_cached(
                    "INSERT INTO cairn.view_documents (projection, generation, key, document) \
                     SELECT $1, $2, * FROM unnest($3::text[], $4::text[]) \
                     ON CONFLICT (projection, generation, key) DO UPDATE SET document = EXCLUDED.document",
                )
                .await?;
            txn.execute(&statement, &[&name, &generation, &put_keys, &put_documents]).await
        };
        let delete = async {
            if deleted.is_empty() {
                return Ok(0);
            }
            let statement = txn
                .prepare_cached(
                    "DELETE FROM cairn.view_documents WHERE projection = $1 AND generation = $2 AND key = ANY($3)",
                )
                .await?;
            txn.execute(&statement, &[&name, &generation, &deleted]).await
        };
        let (put, delete, stored) = tokio::join!(put, delete, store_record(&txn, name, &record));
        put?;
        delete?;
        stored?;
        txn.commit().await?;
        Ok(BatchCommit::Done)
    }

    /// A commit with `synchronous_commit` on flushes the write-ahead log up to it, the view
    /// commits before it included.
    async fn flush(&self) -> Result<(), StoreError> {
        let mut client = connection(&self.pool).await?;
        let txn = client.transaction().await?;
        txn.batch_execute("SET LOCAL synchronous_commit = on; SELECT pg_current_xact_id()").await?;
        txn.commit().await?;
        Ok(())
    }

    async fn switch(&self, name: &str, generation: u32) -> Result<Option<ViewRecord>, StoreError> {
        let mut client = connection(&self.pool).await?;
        let txn = client.transaction().await?;
        let Some(mut record) = locked_record(&txn, name).await? else { return Ok(None) };
        self.check_fence(&txn).await?;
        let Some(next) = record.next.filter(|n| n.id == generation) else { return Ok(None) };
        record.live = next;
        record.next = None;
        store_record(&txn, name, &record).await?;
        drop_generations(&txn, name, &generations(&record)).await?;
        txn.commit().await?;
        Ok(Some(record))
    }

    async fn document(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Option<(Position, Option<String>)>, StoreError> {
        let mut client = connection(&self.pool).await?;
        let txn = snapshot(&mut client).await?;
        let Some((generation, cursor)) = live(&txn, name).await? else { return Ok(None) };
        let statement = txn.prepare_cached(DOCUMENT).await?;
        let row = txn.query_opt(&statement, &[&name, &generation, &key]).await?;
        let document = row.map(|row| row.try_get(0)).transpose()?;
        txn.commit().await?;
        Ok(Some((cursor, document)))
    }

    async fn keys(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Position, Vec<String>)>, StoreError> {
        let mut client = connection(&self.pool).await?;
        let txn = snapshot(&mut client).await?;
        let Some((generation, cursor)) = live(&txn, name).await? else { return Ok(None) };
        let statement = txn
            .prepare_cached(
                "SELECT key FROM cairn.view_documents WHERE projection = $1 AND generation = $2 \
                 AND ($3::text IS NULL OR key > $3) AND left(key, 1) <> '_' ORDER BY key LIMIT $4",
            )
            .await?;
        let rows = txn.query(&statement, &[&name, &generation, &after, &big(limit as u64)]).await?;
        let keys = rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
        txn.commit().await?;
        Ok(Some((cursor, keys)))
    }

    async fn document_count(&self, name: &str, generation: u32) -> Result<u64, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "SELECT count(*) FROM cairn.view_documents WHERE projection = $1 AND generation = $2",
            )
            .await?;
        let row = client.query_one(&statement, &[&name, &(generation as i32)]).await?;
        Ok(row.try_get::<_, i64>(0)? as u64)
    }

    async fn reader(&self, name: &str, generation: u32) -> Result<Box<dyn DocumentReader>, StoreError> {
        let client = connection(&self.pool).await?;
        let statement = client.prepare_cached(DOCUMENT).await?;
        Ok(Box::new(CommittedDocuments {
            client,
            statement,
            projection: name.to_owned(),
            generation: generation as i32,
            runtime: tokio::runtime::Handle::current(),
        }))
    }
}

/// A generation's committed documents, read one by one as the guest asks for them. The guest
/// runs on a blocking thread, so each read waits there for its answer.
struct CommittedDocuments {
    client: deadpool_postgres::Object,
    statement: tokio_postgres::Statement,
    projection: String,
    generation: i32,
    runtime: tokio::runtime::Handle,
}

impl DocumentReader for CommittedDocuments {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        let row = self
            .runtime
            .block_on(self.client.query_opt(&self.statement, &[&self.projection, &self.generation, &key]))
            .map_err(|e| e.to_string())?;
        row.map(|row| row.try_get(0)).transpose().map_err(|e| e.to_string())
    }
}
