//! The store's tables, created and migrated by the host at start. Migrations are numbered
//! SQL files in `migrations/`, applied in order, each once; the database records how far it
//! is. A database that a newer Cairn migrated further than this one knows is refused, as a
//! foreign redb file is: this version cannot know what the newer one changed.

use crate::store::StoreError;
use tokio_postgres::Client;

/// The migrations, in order; the schema version is how many of them a database has.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_cluster.sql"),
    include_str!("migrations/0003_schemas.sql"),
    include_str!("migrations/0004_traces.sql"),
];

/// The schema version this Cairn writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Taken while migrating, so two hosts starting at once do not migrate twice.
const MIGRATION_LOCK: i64 = 0x6361_6972_6e00_0001;

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database holds a Cairn schema of version {found}, newer than this Cairn's {SCHEMA_VERSION}: \
         it was written by a newer Cairn; run that version (or a newer one) against it"
    )]
    Newer { found: i32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(error: tokio_postgres::Error) -> Self {
        SchemaError::Store(error.into())
    }
}

/// Create the schema, or bring it to [`SCHEMA_VERSION`].
pub async fn migrate(client: &mut Client) -> Result<(), SchemaError> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    txn.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS cairn;
         CREATE TABLE IF NOT EXISTS cairn.schema_version (version integer NOT NULL);",
    )
    .await?;
    let found: i32 =
        txn.query_opt("SELECT version FROM cairn.schema_version", &[]).await?.map_or(0, |row| row.get(0));
    if found > SCHEMA_VERSION {
        return Err(SchemaError::Newer { found });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        txn.batch_execute(migration).await?;
        tracing::info!(version = index + 1, "migrated the PostgreSQL schema");
    }
    if found == 0 {
        txn.execute("INSERT INTO cairn.schema_version (version) VALUES ($1)", &[&SCHEMA_VERSION]).await?;
    } else if found < SCHEMA_VERSION {
        txn.execute("UPDATE cairn.schema_version SET version = $1", &[&SCHEMA_VERSION]).await?;
    }
    txn.commit().await?;
    Ok(())
}
