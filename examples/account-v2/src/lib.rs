//! Account, version 2: the same aggregate with one changed rule, to deploy into a running
//! host (see the README's "Deploying a new version").
//!
//! Version 1 records a debit beyond the balance as `AccountDebitFailedDueToInsufficientFunds`.
//! Version 2 grants an overdraft of up to [`OVERDRAFT_LIMIT`]: such a debit is recorded as
//! `AccountDebited` with a negative balance. Events, state and every other rule are
//! version 1's, so replaying history with version 2 changes no state, and a rollback to
//! version 1 reads everything version 2 wrote.

use account::{Account, AccountAggregate, AccountCommand, AccountEvent};
use cairn_guest::{Aggregate, CommandRejected, EventEnvelope, OutgoingCommand, Rejection, Subscription};

/// How far below zero a debit may take an account, in cents.
pub const OVERDRAFT_LIMIT: i64 = 10_000;

pub struct AccountV2;

impl Aggregate for AccountV2 {
    const TYPE: &'static str = AccountAggregate::TYPE;
    type State = Account;
    type Command = AccountCommand;
    type Event = AccountEvent;

    fn handle(state: Option<&Account>, command: AccountCommand) -> Result<Vec<AccountEvent>, Rejection> {
        let events = AccountAggregate::handle(state, command)?;
        // The one changed rule: a debit the overdraft covers goes through.
        Ok(events
            .into_iter()
            .map(|event| match event {
                AccountEvent::AccountDebitFailedDueToInsufficientFunds {
                    amount,
                    transaction_id,
                    balance,
                    transfer,
                } if balance - amount >= -OVERDRAFT_LIMIT => AccountEvent::AccountDebited {
                    amount,
                    transaction_id,
                    balance: balance - amount,
                    transfer,
                },
                other => other,
            })
            .collect())
    }

    fn apply(state: Option<Account>, event: &AccountEvent) -> Account {
        AccountAggregate::apply(state, event)
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
        AccountAggregate::on_rejected(state, rejected)
    }
}

cairn_guest::export_aggregate!(AccountV2);

#[cfg(test)]
mod tests {
    use super::*;
    use account::TransferRef;
    use cairn_guest::testing::given;

    fn debit(amount: i64) -> AccountCommand {
        AccountCommand::DebitAccount { amount, transaction_id: "t".into(), transfer: TransferRef::default() }
    }

    #[test]
    fn a_debit_within_the_overdraft_goes_through() {
        given::<AccountV2>([AccountEvent::AccountOpened { initial_balance: 100 }])
            .when(debit(150))
            .then_events([AccountEvent::AccountDebited {
                amount: 150,
                transaction_id: "t".into(),
                balance: -50,
                transfer: TransferRef::default(),
            }])
            .then_state(|a| assert_eq!(a.balance, -50));
    }

    #[test]
    fn a_debit_beyond_the_overdraft_still_fails() {
        given::<AccountV2>([AccountEvent::AccountOpened { initial_balance: 100 }])
            .when(debit(100 + OVERDRAFT_LIMIT + 1))
            .then_state(|a| assert_eq!(a.balance, 100));
    }
}
