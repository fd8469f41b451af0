//! The retention window of idempotency keys: a client's retry is answered from its first
//! outcome for `retention` (24 h by default, like Restate's), after which the key is
//! forgotten and the same key runs as a new command. Without it every keyed command ever
//! sent would be kept forever.

use super::{StoreError, Writer};
use crate::lifecycle::Part;
use std::time::Duration;

/// Keys forgotten per transaction, so one sweep never holds the writer long.
const PER_TRANSACTION: usize = 1000;

/// Forget expired idempotency keys now and then until `part` or the writer stops.
pub async fn forget_expired_idempotency_keys(writer: Writer, retention: Duration, part: Part) {
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = part.token().cancelled() => return,
        }
        let cutoff = crate::time::now_micros().saturating_sub(retention.as_micros() as u64);
        loop {
            match writer.forget_idempotency_keys(cutoff, PER_TRANSACTION).await {
                Ok(forgotten) => {
                    crate::telemetry::idempotency_keys_forgotten(forgotten);
                    if forgotten < PER_TRANSACTION {
                        break;
                    }
                }
                Err(StoreError::Closed) => return,
                Err(error) => {
                    tracing::warn!("forgetting expired idempotency keys failed (retried later): {error}");
                    break;
                }
            }
        }
    }
}
