//! Account rules as given/when/then. Every scenario runs natively and on `account.wasm`.

use super::*;
use AccountCommand::*;
use AccountEvent::*;
use cairn_guest::glue::RawCommand;
use cairn_guest::testing::envelope;
use cairn_testkit::{given, given_no_events, reactions};

fn opened(initial_balance: i64) -> AccountEvent {
    AccountOpened { initial_balance }
}

fn debit(amount: i64, tx: &str) -> AccountCommand {
    DebitAccount { amount, transaction_id: tx.into(), transfer: TransferRef::default() }
}

fn credit(amount: i64, tx: &str) -> AccountCommand {
    CreditAccount { amount, transaction_id: tx.into(), transfer: TransferRef::default() }
}

fn debited(amount: i64, tx: &str, balance: i64) -> AccountEvent {
    AccountDebited { amount, transaction_id: tx.into(), balance, transfer: TransferRef::default() }
}

fn credited(amount: i64, tx: &str, balance: i64) -> AccountEvent {
    AccountCredited { amount, transaction_id: tx.into(), balance, transfer: TransferRef::default() }
}

#[test]
fn open_account_records_the_initial_balance() {
    given_no_events::<AccountAggregate>()
        .when(OpenAccount { initial_balance: 25000 })
        .then_events([opened(25000)])
        .then_state(|a| assert_eq!(a, &Account { balance: 25000, closed: false }));
}

#[test]
fn open_account_twice_is_rejected() {
    given::<AccountAggregate>([opened(100)])
        .when(OpenAccount { initial_balance: 5 })
        .then_rejected("account_already_open");
}

#[test]
fn open_account_with_a_negative_balance_is_rejected() {
    given_no_events::<AccountAggregate>()
        .when(OpenAccount { initial_balance: -1 })
        .then_rejected("invalid_amount");
}

#[test]
fn seed_figures_25000_minus_5500_plus_1000_is_20500() {
    given::<AccountAggregate>([opened(25000), debited(5500, "t1", 19500)])
        .when(credit(1000, "t2"))
        .then_events([credited(1000, "t2", 20500)])
        .then_state(|a| assert_eq!(a.balance, 20500));
}

#[test]
fn debit_within_the_balance_is_recorded() {
    given::<AccountAggregate>([opened(25000)])
        .when(debit(5500, "t1"))
        .then_events([debited(5500, "t1", 19500)])
        .then_state(|a| assert_eq!(a.balance, 19500));
}

#[test]
fn debit_of_exactly_the_balance_succeeds() {
    given::<AccountAggregate>([opened(700)])
        .when(debit(700, "t1"))
        .then_events([debited(700, "t1", 0)])
        .then_state(|a| assert_eq!(a.balance, 0));
}

#[test]
fn debit_beyond_the_balance_records_insufficient_funds_and_keeps_the_balance() {
    given::<AccountAggregate>([opened(700)])
        .when(debit(701, "t1"))
        .then_events([AccountDebitFailedDueToInsufficientFunds {
            amount: 701,
            transaction_id: "t1".into(),
            balance: 700,
            transfer: TransferRef::default(),
        }])
        .then_state(|a| assert_eq!(a.balance, 700));
}

#[test]
fn non_positive_amounts_are_rejected() {
    for amount in [0, -5] {
        given::<AccountAggregate>([opened(100)]).when(debit(amount, "t")).then_rejected("invalid_amount");
        given::<AccountAggregate>([opened(100)]).when(credit(amount, "t")).then_rejected("invalid_amount");
    }
}

#[test]
fn an_empty_transaction_id_is_invalid() {
    given::<AccountAggregate>([opened(100)]).when(credit(5, " ")).then_rejected("invalid_command");
}

#[test]
fn commands_to_a_never_opened_account_are_rejected() {
    given_no_events::<AccountAggregate>().when(credit(5, "t")).then_rejected("account_not_found");
    given_no_events::<AccountAggregate>().when(debit(5, "t")).then_rejected("account_not_found");
    given_no_events::<AccountAggregate>().when(CloseAccount).then_rejected("account_not_found");
}

#[test]
fn close_account_closes_it() {
    given::<AccountAggregate>([opened(100)])
        .when(CloseAccount)
        .then_events([AccountClosed])
        .then_state(|a| assert!(a.closed));
}

#[test]
fn commands_to_a_closed_account_are_rejected() {
    let history = || [opened(100), AccountClosed];
    given::<AccountAggregate>(history()).when(credit(5, "t")).then_rejected("account_closed");
    given::<AccountAggregate>(history()).when(debit(5, "t")).then_rejected("account_closed");
    given::<AccountAggregate>(history()).when(CloseAccount).then_rejected("account_closed");
}

#[test]
fn an_unknown_command_is_told_apart_from_a_malformed_one() {
    let unknown =
        RawCommand { command_type: "Launch".into(), payload: cairn_guest::codec::EMPTY_MAP.to_vec() };
    given::<AccountAggregate>([opened(1)]).when_raw(unknown).then_rejected("unknown_command");
    let bad = RawCommand {
        command_type: "CreditAccount".into(),
        payload: cairn_guest::codec::encode(&std::collections::BTreeMap::from([("amount", "lots")])),
    };
    given::<AccountAggregate>([opened(1)]).when_raw(bad).then_rejected("invalid_command");
}

/// Another aggregate's events, mirrored by field name (event names are domain words).
#[derive(serde::Serialize)]
#[allow(clippy::enum_variant_names)]
enum TransferEvent {
    MoneyTransferCreated { from_account_id: String, to_account_id: String, amount: i64 },
    MoneyTransferDebitRecorded { from_account_id: String, to_account_id: String, amount: i64 },
    MoneyTransferCreditFailed { from_account_id: String, to_account_id: String, amount: i64, reason: String },
}

fn movement(account: &str, command: &str, amount: i64, tx: &str, counterparty: &str) -> OutgoingCommand {
    #[derive(serde::Serialize)]
    struct Movement<'a> {
        amount: i64,
        transaction_id: &'a str,
        transfer_id: &'a str,
        counterparty_account_id: &'a str,
    }
    let data =
        Movement { amount, transaction_id: tx, transfer_id: "tr1", counterparty_account_id: counterparty };
    OutgoingCommand::new("account", account, command, &data)
}

#[test]
fn a_created_transfer_debits_the_source_account() {
    let event = TransferEvent::MoneyTransferCreated {
        from_account_id: "101".into(),
        to_account_id: "202".into(),
        amount: 5500,
    };
    let sent = reactions::<AccountAggregate>(&envelope("money-transfer", "tr1", 1, &event));
    assert_eq!(sent, vec![movement("101", "DebitAccount", 5500, "tr1", "202")]);
}

#[test]
fn a_recorded_debit_credits_the_target_account() {
    let event = TransferEvent::MoneyTransferDebitRecorded {
        from_account_id: "101".into(),
        to_account_id: "202".into(),
        amount: 5500,
    };
    let sent = reactions::<AccountAggregate>(&envelope("money-transfer", "tr1", 2, &event));
    assert_eq!(sent, vec![movement("202", "CreditAccount", 5500, "tr1", "101")]);
}

#[test]
fn a_failed_credit_credits_the_source_back() {
    let event = TransferEvent::MoneyTransferCreditFailed {
        from_account_id: "101".into(),
        to_account_id: "202".into(),
        amount: 5500,
        reason: "account 202: account_not_found".into(),
    };
    let sent = reactions::<AccountAggregate>(&envelope("money-transfer", "tr1", 3, &event));
    assert_eq!(sent, vec![movement("101", "CreditAccount", 5500, "tr1-reversal", "202")]);
}

#[test]
fn transfer_fields_travel_from_command_to_event() {
    let transfer =
        TransferRef { transfer_id: Some("tr1".into()), counterparty_account_id: Some("202".into()) };
    given::<AccountAggregate>([opened(100)])
        .when(DebitAccount { amount: 40, transaction_id: "tr1".into(), transfer: transfer.clone() })
        .then_events([AccountDebited { amount: 40, transaction_id: "tr1".into(), balance: 60, transfer }]);
}

#[test]
fn the_component_describes_itself() {
    let info = cairn_testkit::describe::<AccountAggregate>();
    assert_eq!(info.type_name, "account");
    assert_eq!(info.subscriptions, AccountAggregate::subscriptions());
}
