//! MoneyTransfer rules as given/when/then. Every scenario runs natively and on
//! `money_transfer.wasm`.

use super::*;
use MoneyTransferCommand::*;
use MoneyTransferEvent::*;
use cairn_guest::testing::envelope;
use cairn_testkit::{given, given_no_events, reactions};

fn create(from: &str, to: &str, amount: i64) -> MoneyTransferCommand {
    CreateMoneyTransfer { from_account_id: from.into(), to_account_id: to.into(), amount }
}

fn created() -> MoneyTransferEvent {
    MoneyTransferCreated { from_account_id: "101".into(), to_account_id: "202".into(), amount: 5500 }
}

fn debit_recorded() -> MoneyTransferEvent {
    MoneyTransferDebitRecorded { from_account_id: "101".into(), to_account_id: "202".into(), amount: 5500 }
}

fn rejected(command_type: &str, target: &str, code: &str) -> CommandRejected {
    CommandRejected {
        command_type: command_type.into(),
        target_type: "account".into(),
        target_id: target.into(),
        code: code.into(),
        message: "refused".into(),
    }
}

fn state_is(expected: TransferState) -> impl Fn(&MoneyTransfer) {
    move |t| assert_eq!(t.state, expected)
}

#[test]
fn create_a_transfer_of_5500_from_101_to_202() {
    given_no_events::<MoneyTransferAggregate>()
        .when(create("101", "202", 5500))
        .then_events([created()])
        .then_state(state_is(TransferState::NEW));
}

#[test]
fn create_twice_is_rejected() {
    given::<MoneyTransferAggregate>([created()])
        .when(create("101", "202", 5500))
        .then_rejected("transfer_already_exists");
}

#[test]
fn a_transfer_to_itself_is_rejected() {
    given_no_events::<MoneyTransferAggregate>().when(create("101", "101", 5)).then_rejected("same_account");
}

#[test]
fn a_non_positive_amount_is_rejected() {
    for amount in [0, -1] {
        given_no_events::<MoneyTransferAggregate>()
            .when(create("101", "202", amount))
            .then_rejected("invalid_amount");
    }
}

#[test]
fn empty_account_ids_are_invalid() {
    given_no_events::<MoneyTransferAggregate>().when(create("", "202", 5)).then_rejected("invalid_command");
}

#[test]
fn account_ids_that_can_never_name_an_account_are_refused_at_creation() {
    let long = "x".repeat(300);
    for (from, to) in [("101", "a/b"), ("a/b", "202"), ("101", long.as_str()), ("101", "bad\nid")] {
        given_no_events::<MoneyTransferAggregate>()
            .when(create(from, to, 5))
            .then_rejected("invalid_account_id");
    }
}

#[test]
fn saga_steps_for_a_missing_transfer_are_rejected() {
    given_no_events::<MoneyTransferAggregate>().when(RecordDebit).then_rejected("transfer_not_found");
}

#[test]
fn new_then_debited_then_completed() {
    given::<MoneyTransferAggregate>([created()])
        .when(RecordDebit)
        .then_events([debit_recorded()])
        .then_state(state_is(TransferState::DEBITED));
    given::<MoneyTransferAggregate>([created(), debit_recorded()])
        .when(RecordCredit { account_id: "202".into() })
        .then_events([MoneyTransferCompleted])
        .then_state(state_is(TransferState::COMPLETED));
}

#[test]
fn insufficient_funds_fails_the_transfer_with_nothing_moved() {
    given::<MoneyTransferAggregate>([created()])
        .when(RecordDebitFailed)
        .then_events([MoneyTransferFailedDueToInsufficientFunds])
        .then_state(state_is(TransferState::FAILED_DUE_TO_INSUFFICIENT_FUNDS));
}

#[test]
fn a_rejected_credit_starts_compensation_and_the_refund_fails_the_transfer() {
    let reason = "account 202: account_not_found".to_owned();
    given::<MoneyTransferAggregate>([created(), debit_recorded()])
        .when_rejected(rejected("CreditAccount", "202", "account_not_found"))
        .then_events([MoneyTransferCreditFailed {
            from_account_id: "101".into(),
            to_account_id: "202".into(),
            amount: 5500,
            reason: reason.clone(),
        }])
        .then_state(state_is(TransferState::COMPENSATING));
    let credit_failed = MoneyTransferCreditFailed {
        from_account_id: "101".into(),
        to_account_id: "202".into(),
        amount: 5500,
        reason: reason.clone(),
    };
    given::<MoneyTransferAggregate>([created(), debit_recorded(), credit_failed])
        .when(RecordCredit { account_id: "101".into() })
        .then_events([MoneyTransferFailed { reason }])
        .then_state(state_is(TransferState::FAILED));
}

#[test]
fn a_refused_refund_is_recorded_for_an_operator() {
    let credit_failed = MoneyTransferCreditFailed {
        from_account_id: "101".into(),
        to_account_id: "202".into(),
        amount: 5500,
        reason: "account 202: account_closed".into(),
    };
    given::<MoneyTransferAggregate>([created(), debit_recorded(), credit_failed])
        .when_rejected(rejected("CreditAccount", "101", "account_closed"))
        .then_events([MoneyTransferRefundFailed { reason: "account 101: account_closed".into() }])
        .then_state(state_is(TransferState::REFUND_FAILED));
}

#[test]
fn a_rejected_debit_fails_the_transfer_with_nothing_moved() {
    given::<MoneyTransferAggregate>([created()])
        .when_rejected(rejected("DebitAccount", "101", "account_closed"))
        .then_events([MoneyTransferFailed { reason: "account 101: account_closed".into() }])
        .then_state(state_is(TransferState::FAILED));
}

#[test]
fn steps_out_of_order_change_nothing() {
    given::<MoneyTransferAggregate>([created(), debit_recorded(), MoneyTransferCompleted])
        .when(RecordDebit)
        .then_no_events();
    given::<MoneyTransferAggregate>([created()])
        .when(RecordCredit { account_id: "202".into() })
        .then_no_events();
}

/// Another aggregate's events, mirrored by field name (event names are domain words).
#[derive(serde::Serialize)]
#[allow(clippy::enum_variant_names)]
enum AccountEvent {
    AccountDebited {
        amount: i64,
        transaction_id: String,
        balance: i64,
        transfer_id: String,
    },
    AccountCredited {
        amount: i64,
        transaction_id: String,
        balance: i64,
        transfer_id: String,
    },
    AccountDebitFailedDueToInsufficientFunds {
        amount: i64,
        transaction_id: String,
        balance: i64,
        transfer_id: String,
    },
    AccountOpened {
        initial_balance: i64,
    },
}

#[test]
fn account_movements_of_a_transfer_are_reported_to_it() {
    let debited = AccountEvent::AccountDebited {
        amount: 1,
        transaction_id: "tr1".into(),
        balance: 0,
        transfer_id: "tr1".into(),
    };
    let sent = reactions::<MoneyTransferAggregate>(&envelope("account", "101", 2, &debited));
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].target_type.as_str(), sent[0].target_id.as_str(), sent[0].command_type.as_str()),
        ("money-transfer", "tr1", "RecordDebit")
    );

    let failed = AccountEvent::AccountDebitFailedDueToInsufficientFunds {
        amount: 1,
        transaction_id: "tr1".into(),
        balance: 0,
        transfer_id: "tr1".into(),
    };
    let sent = reactions::<MoneyTransferAggregate>(&envelope("account", "101", 2, &failed));
    assert_eq!(sent[0].command_type, "RecordDebitFailed");

    let credited = AccountEvent::AccountCredited {
        amount: 1,
        transaction_id: "tr1".into(),
        balance: 1,
        transfer_id: "tr1".into(),
    };
    let sent = reactions::<MoneyTransferAggregate>(&envelope("account", "202", 2, &credited));
    #[derive(serde::Serialize)]
    struct Credit {
        account_id: &'static str,
    }
    assert_eq!(
        sent,
        vec![OutgoingCommand::new("money-transfer", "tr1", "RecordCredit", &Credit { account_id: "202" })]
    );
}

#[test]
fn movements_outside_a_transfer_are_ignored() {
    #[derive(serde::Serialize)]
    enum Plain {
        AccountDebited { amount: i64, transaction_id: String, balance: i64 },
    }
    let event = Plain::AccountDebited { amount: 1, transaction_id: "t".into(), balance: 0 };
    assert!(reactions::<MoneyTransferAggregate>(&envelope("account", "101", 2, &event)).is_empty());
    let opened = AccountEvent::AccountOpened { initial_balance: 1 };
    assert!(reactions::<MoneyTransferAggregate>(&envelope("account", "101", 1, &opened)).is_empty());
}
