//! One host per database: a session advisory lock held on a connection of its own for as
//! long as the host runs, and an owner epoch in the head's row that every group checks, so
//! that a host that lost the database to another never writes again.

use crate::store::StoreError;
use std::time::Duration;
use tokio_postgres::NoTls;

/// The session advisory lock a host holds its database with (exclusively; the members of a
/// cluster each hold it shared, so neither kind of host can start beside the other).
pub(crate) const HOST_LOCK: i64 = 0x6361_6972_6e00_0002;

/// The database held for one host: a session advisory lock on a connection of its own,
/// taken again on a new connection when that one is lost (the lock goes with it). Each time
/// it is taken, the owner epoch in the head's row moves, and every group checks it under
/// the head's lock: a host that lost the database to another never writes again.
pub(crate) struct Ownership {
    config: tokio_postgres::Config,
    exclusive: bool,
    held: tokio::sync::Mutex<Option<Held>>,
    /// The owner epoch this host took the database at (`i64::MIN`: not taken).
    epoch: std::sync::atomic::AtomicI64,
}

/// The lock's session: its connection, and its backend (pid and start), so that a session
/// of this host's that the server still keeps after the connection was lost can be ended.
struct Held {
    client: tokio_postgres::Client,
    backend: (i32, String),
}

impl Ownership {
    pub(crate) fn new(config: tokio_postgres::Config, exclusive: bool) -> Ownership {
        Ownership {
            config,
            exclusive,
            held: tokio::sync::Mutex::new(None),
            epoch: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// The epoch groups must find in the head's row; `None` when the database is shared.
    pub(crate) fn epoch(&self) -> Option<i64> {
        let epoch = self.epoch.load(std::sync::atomic::Ordering::SeqCst);
        (self.exclusive && epoch != i64::MIN).then_some(epoch)
    }

    /// Make sure the lock is held: at once while its connection lives, else on a new one.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be reached, or another host holds it.
    pub(crate) async fn hold(&self) -> Result<(), StoreError> {
        if !self.exclusive {
            return Ok(());
        }
        let mut held = self.held.lock().await;
        if held.as_ref().is_some_and(|held| !held.client.is_closed()) {
            return Ok(());
        }
        let lost = held.take().map(|held| held.backend);
        let taken = tokio::time::timeout(Duration::from_secs(10), self.take(lost.as_ref())).await;
        let taken = taken.map_err(|_| {
            StoreError::Unavailable("the database cannot be reached: no lock within 10 s".to_owned())
        })??;
        *held = Some(taken);
        Ok(())
    }

    async fn take(&self, lost: Option<&(i32, String)>) -> Result<Held, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| {
            StoreError::Unavailable(format!("the database cannot be reached: {}", super::with_causes(&e)))
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // The server keeps an idle session until it notices its client gone: with its own
        // keepalives that is seconds, not the system's two hours.
        // (Only the settings this server has: older ones lack the last two.)
        client
            .batch_execute(
                "SELECT set_config(name, setting, false) FROM (VALUES ('tcp_keepalives_idle', '10'), \
                 ('tcp_keepalives_interval', '5'), ('tcp_keepalives_count', '3'), \
                 ('tcp_user_timeout', '30000'), ('idle_session_timeout', '0')) AS wanted(name, setting) \
                 WHERE name IN (SELECT name FROM pg_settings)",
            )
            .await?;
        let lock = "SELECT pg_try_advisory_lock($1)";
        let mut taken: bool = client.query_one(lock, &[&HOST_LOCK]).await?.try_get(0)?;
        if !taken && let Some((pid, started)) = lost {
            // This host's own earlier session may still hold it (its connection was lost
            // before the server noticed): end that one, and only that one.
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_start::text = $2",
                    &[pid, started],
                )
                .await?;
            for _ in 0..20 {
                taken = client.query_one(lock, &[&HOST_LOCK]).await?.try_get(0)?;
                if taken {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !taken {
            return Err(StoreError::Unavailable(
                "another cairn host holds the database (or a cluster of hosts started with --advertise \
                 does), so this one takes no writes"
                    .to_owned(),
            ));
        }
        let row = client
            .query_one(
                "SELECT pg_backend_pid(), (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid())",
                &[],
            )
            .await?;
        let backend = (row.try_get::<_, i32>(0)?, row.try_get::<_, Option<String>>(1)?.unwrap_or_default());
        // A new epoch: a host that held it before, and lost it, finds its own no longer there.
        let epoch: i64 = client
            .query_one("UPDATE cairn.log_head SET owner_epoch = owner_epoch + 1 RETURNING owner_epoch", &[])
            .await?
            .try_get(0)?;
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
        Ok(Held { client, backend })
    }
}
