//! The `account-info` projection: per account, its balance and its transactions (opening,
//! credits, debits) with the counterparty when the money came from or went to another
//! account through a transfer. `GET /views/account-info/{account_id}`.
//!
//! A document stays small however long the account lives: it holds the most recent
//! transactions (at most [`RECENT_MAX`]); older ones move, [`PAGE`] at a time, to pages
//! under their own keys, `{account_id}/transactions/{n}` (an id has no `/`, so no account
//! can have such a key), each linked to the one before it (`earlier_page`), the newest
//! linked from the account's document. So the document of an account with 50 000
//! transactions is as cheap to read and rewrite as one with 50.
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
    /// The most recent transactions, oldest first.
    pub transactions: Vec<Transaction>,
    /// How many older transactions are in pages.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub earlier_transactions: u64,
    /// The key of the newest page of older transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_page: Option<String>,
}

/// A page of an account's older transactions: `{account_id}/transactions/{page}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionPage {
    pub account_id: String,
    /// Pages count from 1, oldest first.
    pub page: u64,
    /// Oldest first.
    pub transactions: Vec<Transaction>,
    /// The page before this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_page: Option<String>,
}

/// Transactions an account's document holds at most; at this many, the oldest [`PAGE`] of
/// them move to a page of their own.
pub const RECENT_MAX: usize = 200;
/// Transactions a page holds.
pub const PAGE: usize = 100;

/// The key of page `page` of an account's older transactions.
pub fn page_key(account_id: &str, page: u64) -> String {
    format!("{account_id}/transactions/{page}")
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
        // Through `update`, so a batch of many events of one account decodes and writes its
        // document once.
        let older = view.update(id, |info: &mut AccountInfo| {
            info.id = id.to_owned();
            info.balance = transaction.balance;
            info.transactions.push(transaction);
            if info.transactions.len() < RECENT_MAX {
                return None;
            }
            let page = info.earlier_transactions / PAGE as u64 + 1;
            let older = TransactionPage {
                account_id: id.to_owned(),
                page,
                transactions: info.transactions.drain(..PAGE).collect(),
                earlier_page: info.earlier_page.take(),
            };
            let key = page_key(id, page);
            info.earlier_transactions += PAGE as u64;
            info.earlier_page = Some(key.clone());
            Some((key, older))
        });
        if let Some((key, older)) = older {
            view.put(&key, &older);
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(event: &EventEnvelope) -> T {
    // The Account wrote these fields; if they do not decode, the events changed shape and
    // this projection must change with them: stop here rather than show a wrong view.
    event.data().unwrap_or_else(|e| {
        panic!("{} at position {} does not decode: {e}", event.event_type, event.position)
    })
}

#[cfg(not(feature = "library"))]
cairn_guest::export_projection!(AccountInfoProjection);

#[cfg(test)]
mod tests;
