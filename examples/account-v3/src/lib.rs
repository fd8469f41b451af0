//! Account, version 3: the same rules as version 1, with events of a new shape, as real
//! systems change theirs (see the README's "Changing an event's shape"):
//!
//! - amounts and balances carry their currency: `{"cents": 2500, "currency": "EUR"}`
//!   instead of `2500`;
//! - a transfer's fields are nested under `transfer` instead of lying beside the others.
//!
//! Every event type that changed is at schema 2. Its upcasters read version 1's events
//! (schema 1) into the new shape, so this version folds the whole history, and every
//! consumer (a reaction, a projection) reads old and new events alike in the new shape.
//! Commands are unchanged: clients still send amounts in cents.

use account::{AccountAggregate, AccountCommand, TransferRef};
use cairn_guest::{
    Aggregate, CommandRejected, EventEnvelope, OutgoingCommand, Rejection, Subscription, Upcaster,
};
use serde::{Deserialize, Serialize};

/// The only currency version 1 knew: every amount it recorded is in it.
pub const CURRENCY: &str = "EUR";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub cents: i64,
    pub currency: String,
}

impl Money {
    pub fn eur(cents: i64) -> Self {
        Money { cents, currency: CURRENCY.to_owned() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub currency: String,
    pub closed: bool,
}

/// Version 3's events: version 1's, in the new shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    AccountOpened {
        initial_balance: Money,
    },
    AccountCredited {
        amount: Money,
        transaction_id: String,
        balance: Money,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer: Option<TransferRef>,
    },
    AccountDebited {
        amount: Money,
        transaction_id: String,
        balance: Money,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer: Option<TransferRef>,
    },
    AccountDebitFailedDueToInsufficientFunds {
        amount: Money,
        transaction_id: String,
        balance: Money,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer: Option<TransferRef>,
    },
    AccountClosed,
}

/// The event types whose shape changed: at schema 2 in this version.
pub const CHANGED: [&str; 4] =
    ["AccountOpened", "AccountCredited", "AccountDebited", "AccountDebitFailedDueToInsufficientFunds"];

fn nested(transfer: TransferRef) -> Option<TransferRef> {
    (transfer != TransferRef::default()).then_some(transfer)
}

/// A version 1 event in version 3's shape: the upcast, and how this version records what
/// version 1's rules decide.
impl From<account::AccountEvent> for AccountEvent {
    fn from(event: account::AccountEvent) -> Self {
        use account::AccountEvent as V1;
        match event {
            V1::AccountOpened { initial_balance } => {
                AccountEvent::AccountOpened { initial_balance: Money::eur(initial_balance) }
            }
            V1::AccountCredited { amount, transaction_id, balance, transfer } => {
                AccountEvent::AccountCredited {
                    amount: Money::eur(amount),
                    transaction_id,
                    balance: Money::eur(balance),
                    transfer: nested(transfer),
                }
            }
            V1::AccountDebited { amount, transaction_id, balance, transfer } => {
                AccountEvent::AccountDebited {
                    amount: Money::eur(amount),
                    transaction_id,
                    balance: Money::eur(balance),
                    transfer: nested(transfer),
                }
            }
            V1::AccountDebitFailedDueToInsufficientFunds { amount, transaction_id, balance, transfer } => {
                AccountEvent::AccountDebitFailedDueToInsufficientFunds {
                    amount: Money::eur(amount),
                    transaction_id,
                    balance: Money::eur(balance),
                    transfer: nested(transfer),
                }
            }
            V1::AccountClosed => AccountEvent::AccountClosed,
        }
    }
}

impl From<&Account> for account::Account {
    fn from(account: &Account) -> Self {
        account::Account { balance: account.balance, closed: account.closed }
    }
}

pub struct AccountV3;

impl Aggregate for AccountV3 {
    const TYPE: &'static str = AccountAggregate::TYPE;
    type State = Account;
    type Command = AccountCommand;
    type Event = AccountEvent;

    /// Version 1's rules, recorded in the new shape.
    fn handle(state: Option<&Account>, command: AccountCommand) -> Result<Vec<AccountEvent>, Rejection> {
        let state = state.map(account::Account::from);
        let events = AccountAggregate::handle(state.as_ref(), command)?;
        Ok(events.into_iter().map(AccountEvent::from).collect())
    }

    fn apply(state: Option<Account>, event: &AccountEvent) -> Account {
        let mut account =
            state.unwrap_or(Account { balance: 0, currency: CURRENCY.to_owned(), closed: false });
        match event {
            AccountEvent::AccountOpened { initial_balance } => {
                account.balance = initial_balance.cents;
                account.currency.clone_from(&initial_balance.currency);
            }
            AccountEvent::AccountCredited { balance, .. } | AccountEvent::AccountDebited { balance, .. } => {
                account.balance = balance.cents
            }
            AccountEvent::AccountDebitFailedDueToInsufficientFunds { .. } => {}
            AccountEvent::AccountClosed => account.closed = true,
        }
        account
    }

    /// Version 1's events are read in the new shape: one step, from schema 1 to 2, for each
    /// event type that changed.
    fn upcasters() -> Vec<Upcaster> {
        CHANGED
            .iter()
            .map(|event_type| {
                Upcaster::event(event_type, 1, |old: account::AccountEvent| AccountEvent::from(old))
            })
            .collect()
    }

    fn subscriptions() -> Vec<Subscription> {
        AccountAggregate::subscriptions()
    }

    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        AccountAggregate::react(event)
    }

    fn on_rejected(
        state: Option<&Account>,
        rejected: CommandRejected,
    ) -> Result<Vec<AccountEvent>, Rejection> {
        let state = state.map(account::Account::from);
        let events = AccountAggregate::on_rejected(state.as_ref(), rejected)?;
        Ok(events.into_iter().map(AccountEvent::from).collect())
    }
}

cairn_guest::export_aggregate!(AccountV3);

#[cfg(test)]
mod tests;
