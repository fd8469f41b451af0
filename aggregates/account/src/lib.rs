//! The Account aggregate: a balance in minor units (cents) that is opened, credited,
//! debited and closed, and the account's half of the money-transfer saga.
//!
//! A debit beyond the balance is not an error: it is recorded as
//! `AccountDebitFailedDueToInsufficientFunds`, so a saga can see that it failed.

use cairn_guest::{Aggregate, EventEnvelope, OutgoingCommand, Rejection, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub closed: bool,
}

/// Ties a debit or credit to the money transfer that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TransferRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty_account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    OpenAccount {
        initial_balance: i64,
    },
    CreditAccount {
        amount: i64,
        transaction_id: String,
        #[serde(flatten)]
        transfer: TransferRef,
    },
    DebitAccount {
        amount: i64,
        transaction_id: String,
        #[serde(flatten)]
        transfer: TransferRef,
    },
    CloseAccount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    AccountOpened {
        initial_balance: i64,
    },
    AccountCredited {
        amount: i64,
        transaction_id: String,
        balance: i64,
        #[serde(flatten)]
        transfer: TransferRef,
    },
    AccountDebited {
        amount: i64,
        transaction_id: String,
        balance: i64,
        #[serde(flatten)]
        transfer: TransferRef,
    },
    AccountDebitFailedDueToInsufficientFunds {
        amount: i64,
        transaction_id: String,
        balance: i64,
        #[serde(flatten)]
        transfer: TransferRef,
    },
    AccountClosed,
}

/// The money-transfer events this aggregate reacts to, read by field name.
#[derive(Debug, Deserialize)]
struct TransferLeg {
    from_account_id: String,
    to_account_id: String,
    amount: i64,
}

pub struct AccountAggregate;

fn open(state: Option<&Account>) -> Result<&Account, Rejection> {
    match state {
        None => Err(Rejection::new("account_not_found", "the account has not been opened")),
        Some(account) if account.closed => Err(Rejection::new("account_closed", "the account is closed")),
        Some(account) => Ok(account),
    }
}

fn check_movement(amount: i64, transaction_id: &str) -> Result<(), Rejection> {
    if amount <= 0 {
        return Err(Rejection::new("invalid_amount", format!("amount must be positive, got {amount}")));
    }
    if transaction_id.trim().is_empty() {
        return Err(Rejection::invalid("transaction_id must not be empty"));
    }
    Ok(())
}

impl Aggregate for AccountAggregate {
    const TYPE: &'static str = "account";
    type State = Account;
    type Command = AccountCommand;
    type Event = AccountEvent;

    fn handle(state: Option<&Account>, command: AccountCommand) -> Result<Vec<AccountEvent>, Rejection> {
        use AccountCommand::*;
        use AccountEvent::*;
        let event = match command {
            OpenAccount { initial_balance } => {
                if state.is_some() {
                    return Err(Rejection::new("account_already_open", "the account is already open"));
                }
                if initial_balance < 0 {
                    return Err(Rejection::new(
                        "invalid_amount",
                        format!("initial_balance must not be negative, got {initial_balance}"),
                    ));
                }
                AccountOpened { initial_balance }
            }
            CreditAccount { amount, transaction_id, transfer } => {
                let account = open(state)?;
                check_movement(amount, &transaction_id)?;
                let balance = account
                    .balance
                    .checked_add(amount)
                    .ok_or_else(|| Rejection::new("invalid_amount", "the balance would overflow"))?;
                AccountCredited { amount, transaction_id, balance, transfer }
            }
            DebitAccount { amount, transaction_id, transfer } => {
                let account = open(state)?;
                check_movement(amount, &transaction_id)?;
                if amount > account.balance {
                    AccountDebitFailedDueToInsufficientFunds {
                        amount,
                        transaction_id,
                        balance: account.balance,
                        transfer,
                    }
                } else {
                    AccountDebited { amount, transaction_id, balance: account.balance - amount, transfer }
                }
            }
            CloseAccount => {
                open(state)?;
                AccountClosed
            }
        };
        Ok(vec![event])
    }

    fn apply(state: Option<Account>, event: &AccountEvent) -> Account {
        let mut account = state.unwrap_or(Account { balance: 0, closed: false });
        match event {
            AccountEvent::AccountOpened { initial_balance } => account.balance = *initial_balance,
            AccountEvent::AccountCredited { balance, .. } | AccountEvent::AccountDebited { balance, .. } => {
                account.balance = *balance
            }
            AccountEvent::AccountDebitFailedDueToInsufficientFunds { .. } => {}
            AccountEvent::AccountClosed => account.closed = true,
        }
        account
    }

    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to(
            "money-transfer",
            ["MoneyTransferCreated", "MoneyTransferDebitRecorded", "MoneyTransferCreditFailed"],
        )]
    }

    /// The account side of the transfer saga: debit the source when a transfer is created,
    /// credit the target once the debit is recorded, and credit the source back when the
    /// target could not be credited.
    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        let Ok(leg) = event.data::<TransferLeg>() else {
            return Vec::new();
        };
        let transfer_id = event.stream_id.clone();
        let transfer = |counterparty: String| TransferRef {
            transfer_id: Some(transfer_id.clone()),
            counterparty_account_id: Some(counterparty),
        };
        let amount = leg.amount;
        let (account_id, command) = match event.event_type.as_str() {
            "MoneyTransferCreated" => (
                leg.from_account_id,
                AccountCommand::DebitAccount {
                    amount,
                    transaction_id: transfer_id.clone(),
                    transfer: transfer(leg.to_account_id),
                },
            ),
            "MoneyTransferDebitRecorded" => (
                leg.to_account_id,
                AccountCommand::CreditAccount {
                    amount,
                    transaction_id: transfer_id.clone(),
                    transfer: transfer(leg.from_account_id),
                },
            ),
            "MoneyTransferCreditFailed" => (
                leg.from_account_id,
                AccountCommand::CreditAccount {
                    amount,
                    transaction_id: format!("{transfer_id}-reversal"),
                    transfer: transfer(leg.to_account_id),
                },
            ),
            _ => return Vec::new(),
        };
        vec![Self::command_to(&account_id, &command)]
    }
}

#[cfg(not(feature = "library"))]
cairn_guest::export_aggregate!(AccountAggregate);

#[cfg(test)]
mod tests;
