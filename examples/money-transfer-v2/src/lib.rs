//! MoneyTransfer, version 2: the same saga, whose reaction reads the Account's movements in
//! both shapes: version 1's (`transfer_id` beside the other fields) and account-v3's
//! (`transfer: {transfer_id, ...}`). Deploy it before account-v3 (see the README's
//! "Changing an event's shape"): the first version finds no `transfer_id` in the new shape,
//! so its saga would stop, and the deploy of account-v3 is refused while it runs.

use cairn_guest::{
    Aggregate, CommandRejected, EventEnvelope, InternalCommand, OutgoingCommand, Rejection, Subscription,
};
use money_transfer::{MoneyTransfer, MoneyTransferAggregate, MoneyTransferCommand, MoneyTransferEvent};
use serde::Deserialize;

/// A movement's transfer, in either shape.
#[derive(Debug, Deserialize)]
struct Movement {
    #[serde(default)]
    transfer_id: Option<String>,
    #[serde(default)]
    transfer: Option<Nested>,
}

#[derive(Debug, Deserialize)]
struct Nested {
    #[serde(default)]
    transfer_id: Option<String>,
}

impl Movement {
    fn transfer_id(self) -> Option<String> {
        self.transfer_id.or(self.transfer.and_then(|t| t.transfer_id))
    }
}

pub struct MoneyTransferV2;

impl Aggregate for MoneyTransferV2 {
    const TYPE: &'static str = MoneyTransferAggregate::TYPE;
    type State = MoneyTransfer;
    type Command = MoneyTransferCommand;
    type Event = MoneyTransferEvent;

    fn handle(
        state: Option<&MoneyTransfer>,
        command: MoneyTransferCommand,
    ) -> Result<Vec<MoneyTransferEvent>, Rejection> {
        MoneyTransferAggregate::handle(state, command)
    }

    fn apply(state: Option<MoneyTransfer>, event: &MoneyTransferEvent) -> MoneyTransfer {
        MoneyTransferAggregate::apply(state, event)
    }

    fn subscriptions() -> Vec<Subscription> {
        MoneyTransferAggregate::subscriptions()
    }

    fn internal_commands() -> Vec<InternalCommand> {
        MoneyTransferAggregate::internal_commands()
    }

    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        match event.data::<Movement>().ok().and_then(Movement::transfer_id) {
            Some(transfer_id) => money_transfer::report(event, &transfer_id),
            None => Vec::new(),
        }
    }

    fn on_rejected(
        state: Option<&MoneyTransfer>,
        rejected: CommandRejected,
    ) -> Result<Vec<MoneyTransferEvent>, Rejection> {
        MoneyTransferAggregate::on_rejected(state, rejected)
    }
}

cairn_guest::export_aggregate!(MoneyTransferV2);

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_guest::codec;
    use cairn_guest::serde_json::json;
    use cairn_guest::testing::reactions;

    fn debited(data: cairn_guest::serde_json::Value) -> EventEnvelope {
        EventEnvelope {
            stream_type: "account".to_owned(),
            stream_id: "a".to_owned(),
            version: 2,
            position: 2,
            event_type: "AccountDebited".to_owned(),
            payload: codec::encode(&data),
            recorded_at: "2026-01-01T00:00:00Z".to_owned(),
            correlation_id: "c".to_owned(),
            causation_id: None,
        }
    }

    #[test]
    fn a_debit_of_a_transfer_is_recorded_in_either_shape() {
        let expected = vec![MoneyTransferV2::command_to("t1", &MoneyTransferCommand::RecordDebit)];
        let first = debited(json!({"amount": 5, "transaction_id": "t1", "balance": 0, "transfer_id": "t1"}));
        assert_eq!(reactions::<MoneyTransferV2>(&first), expected);
        let nested = debited(json!({
            "amount": {"cents": 5, "currency": "EUR"}, "transaction_id": "t1",
            "balance": {"cents": 0, "currency": "EUR"}, "transfer": {"transfer_id": "t1"}
        }));
        assert_eq!(reactions::<MoneyTransferV2>(&nested), expected);
        let own = debited(json!({"amount": 5, "transaction_id": "x", "balance": 0}));
        assert!(reactions::<MoneyTransferV2>(&own).is_empty(), "a debit of no transfer wakes no saga");
    }
}
