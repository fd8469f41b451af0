//! The MoneyTransfer aggregate (after Eventuate's money-transfer example): a transfer
//! between two accounts, run as a choreography saga.
//!
//! ```text
//! NEW ──debit recorded──> DEBITED ──credit recorded──> COMPLETED
//!  │                         │
//!  └─insufficient funds──> FAILED_DUE_TO_INSUFFICIENT_FUNDS   (nothing moved)
//!                            └─credit rejected──> COMPENSATING ──refund recorded──> FAILED
//! ```
//! The account aggregate debits and credits; this aggregate records what happened, and
//! asks for the source to be credited back when the target account is missing or closed.

use cairn_guest::{
    Aggregate, CommandRejected, EventEnvelope, InternalCommand, OutgoingCommand, Rejection, Subscription,
    check_aggregate_id,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum TransferState {
    NEW,
    DEBITED,
    COMPLETED,
    FAILED_DUE_TO_INSUFFICIENT_FUNDS,
    /// The target could not be credited; the source is being credited back.
    COMPENSATING,
    FAILED,
    /// The credit back to the source was refused too (it was closed meanwhile): the
    /// amount needs an operator. Never reached in the examples.
    REFUND_FAILED,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyTransfer {
    pub state: TransferState,
    pub from_account_id: String,
    pub to_account_id: String,
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoneyTransferCommand {
    CreateMoneyTransfer {
        from_account_id: String,
        to_account_id: String,
        amount: i64,
    },
    /// Saga steps: internal, sent only by this aggregate's reactions to account events.
    RecordDebit,
    RecordDebitFailed,
    RecordCredit {
        account_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoneyTransferEvent {
    MoneyTransferCreated { from_account_id: String, to_account_id: String, amount: i64 },
    MoneyTransferDebitRecorded { from_account_id: String, to_account_id: String, amount: i64 },
    MoneyTransferCompleted,
    MoneyTransferFailedDueToInsufficientFunds,
    MoneyTransferCreditFailed { from_account_id: String, to_account_id: String, amount: i64, reason: String },
    MoneyTransferFailed { reason: String },
    MoneyTransferRefundFailed { reason: String },
}

/// The account events this aggregate reacts to, read by field name.
#[derive(Debug, Deserialize)]
struct AccountMovement {
    #[serde(default)]
    transfer_id: Option<String>,
}

pub struct MoneyTransferAggregate;

/// The saga step that records `event`, an account's movement for the transfer
/// `transfer_id`, on that transfer (none for another event).
pub fn report(event: &EventEnvelope, transfer_id: &str) -> Vec<OutgoingCommand> {
    let command = match event.event_type.as_str() {
        "AccountDebited" => MoneyTransferCommand::RecordDebit,
        "AccountDebitFailedDueToInsufficientFunds" => MoneyTransferCommand::RecordDebitFailed,
        "AccountCredited" => MoneyTransferCommand::RecordCredit { account_id: event.stream_id.clone() },
        _ => return Vec::new(),
    };
    vec![MoneyTransferAggregate::command_to(transfer_id, &command)]
}

impl Aggregate for MoneyTransferAggregate {
    const TYPE: &'static str = "money-transfer";
    type State = MoneyTransfer;
    type Command = MoneyTransferCommand;
    type Event = MoneyTransferEvent;

    fn handle(
        state: Option<&MoneyTransfer>,
        command: MoneyTransferCommand,
    ) -> Result<Vec<MoneyTransferEvent>, Rejection> {
        use MoneyTransferCommand::*;
        use MoneyTransferEvent::*;
        if let CreateMoneyTransfer { from_account_id, to_account_id, amount } = command {
            if state.is_some() {
                return Err(Rejection::new("transfer_already_exists", "this transfer was already created"));
            }
            if from_account_id.trim().is_empty() || to_account_id.trim().is_empty() {
                return Err(Rejection::invalid("from_account_id and to_account_id must not be empty"));
            }
            // An id no account can have would be debited and then fail inside the saga.
            for (field, id) in [("from_account_id", &from_account_id), ("to_account_id", &to_account_id)] {
                check_aggregate_id(id).map_err(|e| {
                    Rejection::new("invalid_account_id", format!("{field} can never name an account: {e}"))
                })?;
            }
            if from_account_id == to_account_id {
                return Err(Rejection::new("same_account", "cannot transfer from an account to itself"));
            }
            if amount <= 0 {
                return Err(Rejection::new(
                    "invalid_amount",
                    format!("amount must be positive, got {amount}"),
                ));
            }
            return Ok(vec![MoneyTransferCreated { from_account_id, to_account_id, amount }]);
        }
        let transfer = state.ok_or_else(|| Rejection::new("transfer_not_found", "no such money transfer"))?;
        // Saga steps arriving in a state that does not expect them change nothing: the host
        // delivers each effect once and refuses the steps from clients (they are internal),
        // so this only guards against a reaction of another version.
        let events = match (command, transfer.state) {
            (RecordDebit, TransferState::NEW) => vec![MoneyTransferDebitRecorded {
                from_account_id: transfer.from_account_id.clone(),
                to_account_id: transfer.to_account_id.clone(),
                amount: transfer.amount,
            }],
            (RecordDebitFailed, TransferState::NEW) => {
                vec![MoneyTransferFailedDueToInsufficientFunds]
            }
            (RecordCredit { account_id }, TransferState::DEBITED) if account_id == transfer.to_account_id => {
                vec![MoneyTransferCompleted]
            }
            (RecordCredit { account_id }, TransferState::COMPENSATING)
                if account_id == transfer.from_account_id =>
            {
                vec![MoneyTransferFailed { reason: transfer.failure_reason.clone().unwrap_or_default() }]
            }
            _ => Vec::new(),
        };
        Ok(events)
    }

    fn apply(state: Option<MoneyTransfer>, event: &MoneyTransferEvent) -> MoneyTransfer {
        use MoneyTransferEvent::*;
        if let MoneyTransferCreated { from_account_id, to_account_id, amount } = event {
            return MoneyTransfer {
                state: TransferState::NEW,
                from_account_id: from_account_id.clone(),
                to_account_id: to_account_id.clone(),
                amount: *amount,
                failure_reason: None,
            };
        }
        let mut transfer = state.expect("a transfer's first event is MoneyTransferCreated");
        match event {
            MoneyTransferCreated { .. } => unreachable!("handled above"),
            MoneyTransferDebitRecorded { .. } => transfer.state = TransferState::DEBITED,
            MoneyTransferCompleted => transfer.state = TransferState::COMPLETED,
            MoneyTransferFailedDueToInsufficientFunds => {
                transfer.state = TransferState::FAILED_DUE_TO_INSUFFICIENT_FUNDS
            }
            MoneyTransferCreditFailed { reason, .. } => {
                transfer.state = TransferState::COMPENSATING;
                transfer.failure_reason = Some(reason.clone());
            }
            MoneyTransferFailed { reason } => {
                transfer.state = TransferState::FAILED;
                transfer.failure_reason = Some(reason.clone());
            }
            MoneyTransferRefundFailed { reason } => {
                transfer.state = TransferState::REFUND_FAILED;
                transfer.failure_reason = Some(reason.clone());
            }
        }
        transfer
    }

    /// Only the accounts' answers to this transfer's own debit and credit: a `DebitAccount`
    /// a client sent naming some transfer's id never moves that transfer.
    fn subscriptions() -> Vec<Subscription> {
        vec![
            Subscription::to(
                "account",
                ["AccountDebited", "AccountDebitFailedDueToInsufficientFunds", "AccountCredited"],
            )
            .replies_only(),
        ]
    }

    fn internal_commands() -> Vec<InternalCommand> {
        ["RecordDebit", "RecordDebitFailed", "RecordCredit"]
            .into_iter()
            .map(|command| InternalCommand::named(command).only_from(["account"]))
            .collect()
    }

    /// Report account movements that belong to a transfer back to that transfer.
    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        let Ok(AccountMovement { transfer_id: Some(transfer_id) }) = event.data() else {
            return Vec::new();
        };
        report(event, &transfer_id)
    }

    /// A debit or credit this transfer asked for was refused by the account.
    fn on_rejected(
        state: Option<&MoneyTransfer>,
        rejected: CommandRejected,
    ) -> Result<Vec<MoneyTransferEvent>, Rejection> {
        use MoneyTransferEvent::*;
        let Some(transfer) = state else {
            return Ok(Vec::new());
        };
        let reason = format!("{} {}: {}", rejected.target_type, rejected.target_id, rejected.code);
        let events = match (rejected.command_type.as_str(), transfer.state) {
            // The source account is missing or closed: nothing was debited.
            ("DebitAccount", TransferState::NEW) => vec![MoneyTransferFailed { reason }],
            ("CreditAccount", TransferState::DEBITED) => vec![MoneyTransferCreditFailed {
                from_account_id: transfer.from_account_id.clone(),
                to_account_id: transfer.to_account_id.clone(),
                amount: transfer.amount,
                reason,
            }],
            ("CreditAccount", TransferState::COMPENSATING) => {
                vec![MoneyTransferRefundFailed { reason }]
            }
            _ => Vec::new(),
        };
        Ok(events)
    }
}

#[cfg(not(feature = "library"))]
cairn_guest::export_aggregate!(MoneyTransferAggregate);

#[cfg(test)]
mod tests;
