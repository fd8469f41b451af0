//! The `account-info` projection: per account, its balance and every transaction (opening,
//! credits, debits) with the counterparty when the money came from or went to another
//! account through a transfer. `GET /views/account-info/{account_id}`.
//!
//! It reads the Account's events by field name into its own types: a projection depends
//! on the events' shape, not on the aggregate's code.

use cairn_guest::{EventEnvelope, Projection, Subscription, View};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AccountInfo {
    pub id: String,
    pub balance: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
    pub transactions: Vec<Transaction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub transaction_id: String,
    /// `opened`, `credit` or `debit`.
    pub kind: String,
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty_account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// The balance right after this transaction.
    pub balance: i64,
    pub recorded_at: String,
}

/// `AccountOpened`'s fields.
#[derive(Deserialize)]
struct Opened {
    initial_balance: i64,
}

/// The fields of `AccountCredited` and `AccountDebited`.
#[derive(Deserialize)]
struct Movement {
    amount: i64,
    transaction_id: String,
    balance: i64,
    #[serde(default)]
    transfer_id: Option<String>,
    #[serde(default)]
    counterparty_account_id: Option<String>,
}

pub struct AccountInfoProjection;

impl Projection for AccountInfoProjection {
    const NAME: &'static str = "account-info";

    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to(
            "account",
            ["AccountOpened", "AccountCredited", "AccountDebited", "AccountClosed"],
        )]
    }

    fn handle(event: &EventEnvelope, view: &mut View<'_>) {
        let id = event.stream_id.as_str();
        let transaction = match event.event_type.as_str() {
            "AccountOpened" => {
                let opened: Opened = decode(event);
                Transaction {
                    transaction_id: "opening".to_owned(),
                    kind: "opened".to_owned(),
                    amount: opened.initial_balance,
                    counterparty_account_id: None,
                    transfer_id: None,
                    balance: opened.initial_balance,
                    recorded_at: event.recorded_at.clone(),
                }
            }
            kind @ ("AccountCredited" | "AccountDebited") => {
                let movement: Movement = decode(event);
                Transaction {
                    transaction_id: movement.transaction_id,
                    kind: if kind == "AccountCredited" { "credit" } else { "debit" }.to_owned(),
                    amount: movement.amount,
                    counterparty_account_id: movement.counterparty_account_id,
                    transfer_id: movement.transfer_id,
                    balance: movement.balance,
                    recorded_at: event.recorded_at.clone(),
                }
            }
            "AccountClosed" => {
                view.update(id, |info: &mut AccountInfo| info.closed = true);
                return;
            }
            _ => return,
        };
        view.update(id, |info: &mut AccountInfo| {
            info.id = id.to_owned();
            info.balance = transaction.balance;
            info.transactions.push(transaction);
        });
    }
}

fn decode<T: serde::de::DeserializeOwned>(event: &EventEnvelope) -> T {
    // The Account wrote these fields; if they do not decode, the events changed shape and
    // this projection must change with them: stop here rather than show a wrong view.
    event.data().unwrap_or_else(|e| {
        panic!("{} at position {} does not decode: {e}", event.event_type, event.position)
    })
}

cairn_guest::export_projection!(AccountInfoProjection);

#[cfg(test)]
mod tests;
