//! Following the database's commits: a listener connection that `LISTEN`s on the log's
//! channel and moves the head watch, for this host's commits and any other's, and reads the
//! head once a second in case a notification was lost.

use super::writer::{Health, LOG_CHANNEL, advance};
use crate::store::Position;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Follow the database's commits: move the head on every notification, and read it once a
/// second in case one was lost.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    head: Arc<watch::Sender<Position>>,
    health: Arc<Mutex<Health>>,
    stop: CancellationToken,
) {
    let advance = |position: i64| advance(&head, Position(position as u64));
    let pause = async || {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = stop.cancelled() => true,
        }
    };
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            connected = config.connect(tokio_postgres::NoTls) => connected,
            _ = stop.cancelled() => return,
        };
        let (client, mut connection) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                health.lock().expect("writer health lock").unreachable = Some(super::with_causes(&error));
                if pause().await {
                    return;
                }
                continue;
            }
        };
        let (notified, mut notifications) = mpsc::unbounded_channel();
        let mut driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(note))) => {
                        let _ = notified.send(note.payload().parse::<u64>().unwrap_or(u64::MAX));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return error.to_string(),
                    None => return "the connection closed".to_owned(),
                }
            }
        });
        // The head as committed, read when a notification wakes the listener (its payload is
        // not trusted: any role may NOTIFY) and once a second in case one was lost.
        let read_head = async || {
            let read = client.query_one("SELECT position FROM cairn.log_head", &[]);
            match tokio::time::timeout(Duration::from_secs(5), read).await {
                Ok(Ok(row)) => row.try_get::<_, i64>(0).map_err(|e| e.to_string()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("the head was not read within 5 s".to_owned()),
            }
        };
        let listening = client.batch_execute(&format!("LISTEN {LOG_CHANNEL}")).await;
        let lost = match listening {
            Err(error) => error.to_string(),
            Ok(()) => {
                health.lock().expect("writer health lock").unreachable = None;
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        Some(mut said) = notifications.recv() => {
                            while let Ok(more) = notifications.try_recv() {
                                said = said.max(more);
                            }
                            // What a notification says is only a hint: one at or below the
                            // head this host knows (its own commits) needs no read, any other
                            // is checked against the head as committed.
                            if said <= head.borrow().get() {
                                continue;
                            }
                            match read_head().await {
                                Ok(position) => advance(position),
                                Err(error) => break error,
                            }
                        }
                        _ = every_second.tick() => match read_head().await {
                            Ok(position) => advance(position),
                            Err(error) => break error,
                        },
                        ended = &mut driver => break ended.unwrap_or_else(|e| e.to_string()),
                        _ = stop.cancelled() => { driver.abort(); return; }
                    }
                }
            }
        };
        tracing::warn!("lost the connection that follows the log: {lost}");
        health.lock().expect("writer health lock").unreachable = Some(lost);
        driver.abort();
        if pause().await {
            return;
        }
    }
}
