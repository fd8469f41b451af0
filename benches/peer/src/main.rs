//! The peer in Cairn's benchmarks: the Account aggregate's rules on cqrs-es with postgres-es
//! (PostgreSQL, fsync on), behind the slice of Cairn's HTTP API that `cairn bench` drives:
//!
//! - `POST /aggregates/account/{id}/commands` with `{"type": ..., "data": {...}}`: 200 once the
//!   events are committed, 422 for a rejection, 409 when another command on the same account
//!   won the optimistic lock (cqrs-es does not retry), 503 for a database error;
//! - `GET /aggregates/account/{id}`: the account's state;
//! - `GET /healthz`: the baseline every ratio is taken against.

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, CqrsFramework, DomainEvent, EventStore};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;

#[derive(Parser)]
struct Options {
    /// PostgreSQL connection string.
    #[arg(long, default_value = "postgresql://postgres@localhost:55432/postgres")]
    database: String,
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Connections in the pool (PostgreSQL allows 100 by default).
    #[arg(long, default_value_t = 64)]
    pool: u32,
    /// Snapshot every N events (cqrs-es's snapshot store), so that a long-lived account is not
    /// replayed from its first event on every command; 0 replays every event every time.
    #[arg(long, default_value_t = 100)]
    snapshot_every: usize,
}

/// The same rules as `aggregates/account`: balances in minor units, debits beyond the balance
/// recorded as a failed debit rather than refused.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    opened: bool,
    balance: i64,
    closed: bool,
}

// The variant names are the wire names the Account component uses.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data")]
enum AccountCommand {
    OpenAccount { initial_balance: i64 },
    CreditAccount { amount: i64, transaction_id: String },
    DebitAccount { amount: i64, transaction_id: String },
    CloseAccount,
}

#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    AccountOpened { initial_balance: i64 },
    AccountCredited { amount: i64, transaction_id: String, balance: i64 },
    AccountDebited { amount: i64, transaction_id: String, balance: i64 },
    AccountDebitFailedDueToInsufficientFunds { amount: i64, transaction_id: String, balance: i64 },
    AccountClosed,
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::AccountOpened { .. } => "AccountOpened",
            Self::AccountCredited { .. } => "AccountCredited",
            Self::AccountDebited { .. } => "AccountDebited",
            Self::AccountDebitFailedDueToInsufficientFunds { .. } => {
                "AccountDebitFailedDueToInsufficientFunds"
            }
            Self::AccountClosed => "AccountClosed",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
struct Rejection {
    code: &'static str,
    message: String,
}

fn reject(code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection { code, message: message.into() }
}

impl Account {
    fn must_be_open(&self) -> Result<(), Rejection> {
        match (self.opened, self.closed) {
            (false, _) => Err(reject("account_not_found", "the account has not been opened")),
            (true, true) => Err(reject("account_closed", "the account is closed")),
            (true, false) => Ok(()),
        }
    }
}

fn check_movement(amount: i64, transaction_id: &str) -> Result<(), Rejection> {
    if amount <= 0 {
        return Err(reject("invalid_amount", format!("amount must be positive, got {amount}")));
    }
    if transaction_id.trim().is_empty() {
        return Err(reject("invalid_command", "transaction_id must not be empty"));
    }
    Ok(())
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Rejection;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Rejection> {
        use AccountCommand::*;
        use AccountEvent::*;
        let event = match command {
            OpenAccount { initial_balance } => {
                if self.opened {
                    return Err(reject("account_already_open", "the account is already open"));
                }
                if initial_balance < 0 {
                    return Err(reject("invalid_amount", "initial_balance must not be negative"));
                }
                AccountOpened { initial_balance }
            }
            CreditAccount { amount, transaction_id } => {
                self.must_be_open()?;
                check_movement(amount, &transaction_id)?;
                let balance = self
                    .balance
                    .checked_add(amount)
                    .ok_or_else(|| reject("invalid_amount", "the balance would overflow"))?;
                AccountCredited { amount, transaction_id, balance }
            }
            DebitAccount { amount, transaction_id } => {
                self.must_be_open()?;
                check_movement(amount, &transaction_id)?;
                if amount > self.balance {
                    AccountDebitFailedDueToInsufficientFunds { amount, transaction_id, balance: self.balance }
                } else {
                    AccountDebited { amount, transaction_id, balance: self.balance - amount }
                }
            }
            CloseAccount => {
                self.must_be_open()?;
                AccountClosed
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountOpened { initial_balance } => {
                self.opened = true;
                self.balance = initial_balance;
            }
            AccountEvent::AccountCredited { balance, .. } | AccountEvent::AccountDebited { balance, .. } => {
                self.balance = balance
            }
            AccountEvent::AccountDebitFailedDueToInsufficientFunds { .. } => {}
            AccountEvent::AccountClosed => self.closed = true,
        }
    }
}

type Store = PersistedEventStore<PostgresEventRepository, Account>;

struct Peer {
    cqrs: CqrsFramework<Account, Store>,
    reads: Store,
}

fn store(repository: PostgresEventRepository, snapshot_every: usize) -> Store {
    match snapshot_every {
        0 => PersistedEventStore::new_event_store(repository),
        n => PersistedEventStore::new_snapshot_store(repository, n),
    }
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.to_string()}}))).into_response()
}

fn answer(error_of: AggregateError<Rejection>) -> Response {
    match error_of {
        AggregateError::UserError(rejection) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, rejection.code, rejection.message)
        }
        AggregateError::AggregateConflict => {
            error(StatusCode::CONFLICT, "conflict", "another command on this account committed first")
        }
        other => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", other),
    }
}

async fn command(State(peer): State<Arc<Peer>>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let command: AccountCommand = match serde_json::from_slice(&body) {
        Ok(command) => command,
        Err(parse) => return error(StatusCode::BAD_REQUEST, "invalid_command", parse),
    };
    match peer.cqrs.execute(&id, command).await {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(failure) => answer(failure),
    }
}

async fn state(State(peer): State<Arc<Peer>>, Path(id): Path<String>) -> Response {
    match peer.reads.load_aggregate(&id).await {
        Ok(mut context) => {
            let account = context.aggregate();
            if !account.opened {
                return error(StatusCode::NOT_FOUND, "stream_not_found", "no such account");
            }
            Json(json!({"state": account})).into_response()
        }
        Err(failure) => answer(failure),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let pool = PgPoolOptions::new()
        .max_connections(options.pool)
        .connect(&options.database)
        .await
        .with_context(|| format!("connecting to {}", options.database))?;
    for statement in include_str!("../schema.sql").split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(statement).execute(&pool).await.context("creating the event tables")?;
    }
    let repository = || PostgresEventRepository::new(pool.clone());
    let peer = Arc::new(Peer {
        cqrs: CqrsFramework::new(store(repository(), options.snapshot_every), Vec::new(), ()),
        reads: store(repository(), options.snapshot_every),
    });
    let app = Router::new()
        .route("/aggregates/account/{id}/commands", post(command))
        .route("/aggregates/account/{id}", get(state))
        .route("/healthz", get(healthz))
        .with_state(peer);
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    eprintln!("cairn-peer (cqrs-es + postgres-es) on http://{}", options.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    Ok(())
}
