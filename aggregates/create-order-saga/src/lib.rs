//! The Create Order saga, orchestrated (the seeds' other style, after Eventuate's "the Order
//! Service creates the Create Order saga orchestrator"): a persistent object whose state is
//! the saga's state machine, and which tells the participants what to do. The choreographed
//! saga runs the same transaction by having the order and the customer react to each other;
//! here neither reacts to the other, the orchestrator drives both.
//!
//! ```text
//! StartCreateOrder ─> CREATING_ORDER ──order created──> RESERVING_CREDIT ──credit reserved──> APPROVING ──order approved──> APPROVED
//!                          │                                 │
//!                          │                                 │                                    └──approval refused──> REJECTED (credit released)
//!                          │                                 └──credit refused / no customer──> REJECTING ──order rejected──> REJECTED
//!                          └──the order cannot be created────────────────────────────────────────────────────────────────> REJECTED
//! ```
//!
//! The one compensation: credit reserved for an order that then refuses its approval is
//! released (`ReleaseCredit` to the customer, sent as the reaction to the saga's last
//! event, so the host delivers it once even through a crash).
//!
//! The saga's id is its order's id: replies name the order (`OrderCreated` is an event of
//! `order/{id}`, the customer's credit events carry `order_id`), so that is how they find
//! their saga. Every step bounces through the saga's own stream, as an event, before its
//! command goes out: the state machine is persisted at each step, and each command the
//! saga sends is a reaction to one of its own events, so its answers are replies to the
//! saga, never to the order or the customer (whose choreography therefore leaves them be).
//! Its steps are internal commands that only the participants' replies may cause.

use cairn_guest::{
    Aggregate, CommandRejected, EventEnvelope, InternalCommand, OutgoingCommand, Rejection, Subscription,
    check_aggregate_id,
};
use customer::{CustomerAggregate, CustomerCommand};
use order::{OrderAggregate, OrderCommand};
use serde::{Deserialize, Serialize};

/// This aggregate's type name.
pub const TYPE: &str = "create-order-saga";

pub const INSUFFICIENT_CREDIT: &str = "INSUFFICIENT_CREDIT";
pub const UNKNOWN_CUSTOMER: &str = "UNKNOWN_CUSTOMER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum SagaState {
    /// The order is being created (`CreateOrder` sent).
    CREATING_ORDER,
    /// The order exists, `PENDING`; the customer is asked to reserve the credit.
    RESERVING_CREDIT,
    /// The credit is reserved; the order is being approved.
    APPROVING,
    /// The credit was refused (or there is no such customer); the order is being rejected.
    REJECTING,
    APPROVED,
    REJECTED,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrderSaga {
    pub state: SagaState,
    pub order_id: String,
    pub customer_id: String,
    pub order_total: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
    /// The customer refused the compensation's `ReleaseCredit` (its code): the credit is
    /// still reserved, and someone must release it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaCommand {
    /// Start the saga for the order `order_id`: the saga's own id must be that order id.
    StartCreateOrder { order_id: String, customer_id: String, order_total: i64 },
    /// Steps, internal: the order was created.
    RecordOrderCreated,
    /// The customer reserved the credit.
    RecordCreditReserved,
    /// The customer refused the credit.
    RecordCreditRefused,
    /// The order was approved.
    RecordOrderApproved,
    /// The order was rejected.
    RecordOrderRejected,
    /// The saga cannot go on (sent by its own reaction, e.g. a start whose order id is not
    /// the saga's id).
    AbandonSaga { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaEvent {
    CreateOrderSagaStarted {
        order_id: String,
        customer_id: String,
        order_total: i64,
    },
    OrderCreationRecorded {
        order_id: String,
        customer_id: String,
        order_total: i64,
    },
    CreditReservationRecorded {
        order_id: String,
    },
    CreditRefusalRecorded {
        order_id: String,
        rejection_reason: String,
    },
    CreateOrderSagaApproved {
        order_id: String,
    },
    CreateOrderSagaRejected {
        order_id: String,
        rejection_reason: String,
    },
    /// The order refused its approval after the credit was reserved: the saga ends rejected
    /// and its reaction releases the credit.
    CreditReleaseRequested {
        order_id: String,
        customer_id: String,
        rejection_reason: String,
    },
    /// The customer refused that release: the saga stays rejected and says so.
    CreditReleaseRefused {
        order_id: String,
        customer_id: String,
        code: String,
    },
}

/// The fields the saga reads from its own events and from the participants' replies.
#[derive(Debug, Deserialize)]
struct Step {
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    order_total: Option<i64>,
    #[serde(default)]
    rejection_reason: Option<String>,
}

pub struct CreateOrderSagaAggregate;

fn rejected(saga: &CreateOrderSaga, reason: impl Into<String>) -> SagaEvent {
    SagaEvent::CreateOrderSagaRejected { order_id: saga.order_id.clone(), rejection_reason: reason.into() }
}

impl Aggregate for CreateOrderSagaAggregate {
    const TYPE: &'static str = TYPE;
    type State = CreateOrderSaga;
    type Command = SagaCommand;
    type Event = SagaEvent;

    fn handle(state: Option<&CreateOrderSaga>, command: SagaCommand) -> Result<Vec<SagaEvent>, Rejection> {
        use SagaCommand::*;
        use SagaEvent::*;
        if let StartCreateOrder { order_id, customer_id, order_total } = command {
            if state.is_some() {
                return Err(Rejection::new("saga_already_exists", "this saga was already started"));
            }
            for (field, id) in [("order_id", &order_id), ("customer_id", &customer_id)] {
                check_aggregate_id(id).map_err(|e| {
                    Rejection::new("invalid_id", format!("{field} can never name an aggregate: {e}"))
                })?;
            }
            if order_total <= 0 {
                return Err(Rejection::new(
                    "invalid_amount",
                    format!("order_total must be positive, got {order_total}"),
                ));
            }
            return Ok(vec![CreateOrderSagaStarted { order_id, customer_id, order_total }]);
        }
        let saga = state.ok_or_else(|| Rejection::new("saga_not_found", "no such saga"))?;
        // A step in a state that does not expect it changes nothing: the host delivers each
        // effect once, so only a redelivered reply through changed logic can bring one.
        let events = match (command, saga.state) {
            (StartCreateOrder { .. }, _) => unreachable!("handled above"),
            (RecordOrderCreated, SagaState::CREATING_ORDER) => vec![OrderCreationRecorded {
                order_id: saga.order_id.clone(),
                customer_id: saga.customer_id.clone(),
                order_total: saga.order_total,
            }],
            (RecordCreditReserved, SagaState::RESERVING_CREDIT) => {
                vec![CreditReservationRecorded { order_id: saga.order_id.clone() }]
            }
            (RecordCreditRefused, SagaState::RESERVING_CREDIT) => vec![CreditRefusalRecorded {
                order_id: saga.order_id.clone(),
                rejection_reason: INSUFFICIENT_CREDIT.to_owned(),
            }],
            (RecordOrderApproved, SagaState::APPROVING) => {
                vec![CreateOrderSagaApproved { order_id: saga.order_id.clone() }]
            }
            (RecordOrderRejected, SagaState::REJECTING) => {
                vec![rejected(saga, saga.rejection_reason.clone().unwrap_or_default())]
            }
            (AbandonSaga { reason }, SagaState::CREATING_ORDER) => vec![rejected(saga, reason)],
            _ => Vec::new(),
        };
        Ok(events)
    }

    fn apply(state: Option<CreateOrderSaga>, event: &SagaEvent) -> CreateOrderSaga {
        use SagaEvent::*;
        if let CreateOrderSagaStarted { order_id, customer_id, order_total } = event {
            return CreateOrderSaga {
                state: SagaState::CREATING_ORDER,
                order_id: order_id.clone(),
                customer_id: customer_id.clone(),
                order_total: *order_total,
                rejection_reason: None,
                release_refused: None,
            };
        }
        let mut saga = state.expect("a saga's first event is CreateOrderSagaStarted");
        match event {
            CreateOrderSagaStarted { .. } => unreachable!("handled above"),
            OrderCreationRecorded { .. } => saga.state = SagaState::RESERVING_CREDIT,
            CreditReservationRecorded { .. } => saga.state = SagaState::APPROVING,
            CreditRefusalRecorded { rejection_reason, .. } => {
                saga.state = SagaState::REJECTING;
                saga.rejection_reason = Some(rejection_reason.clone());
            }
            CreateOrderSagaApproved { .. } => saga.state = SagaState::APPROVED,
            CreateOrderSagaRejected { rejection_reason, .. }
            | CreditReleaseRequested { rejection_reason, .. } => {
                saga.state = SagaState::REJECTED;
                saga.rejection_reason = Some(rejection_reason.clone());
            }
            CreditReleaseRefused { code, .. } => saga.release_refused = Some(code.clone()),
        }
        saga
    }

    /// Its own steps (each sends the next command), and only the participants' replies to
    /// the commands it sent: an order or a credit decision of the choreography, or one a
    /// client caused, never moves it.
    fn subscriptions() -> Vec<Subscription> {
        vec![
            Subscription::to(
                TYPE,
                [
                    "CreateOrderSagaStarted",
                    "OrderCreationRecorded",
                    "CreditReservationRecorded",
                    "CreditRefusalRecorded",
                    "CreditReleaseRequested",
                ],
            ),
            Subscription::to("order", ["OrderCreated", "OrderApproved", "OrderRejected"]).replies_only(),
            Subscription::to("customer", ["CustomerCreditReserved", "CustomerCreditReservationFailed"])
                .replies_only(),
        ]
    }

    fn internal_commands() -> Vec<InternalCommand> {
        let from = |source: &str, commands: &[&str]| -> Vec<InternalCommand> {
            commands.iter().map(|c| InternalCommand::named(c).only_from([source])).collect()
        };
        [
            from("order", &["RecordOrderCreated", "RecordOrderApproved", "RecordOrderRejected"]),
            from("customer", &["RecordCreditReserved", "RecordCreditRefused"]),
            from(TYPE, &["AbandonSaga"]),
        ]
        .concat()
    }

    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        let Ok(step) = event.data::<Step>() else { return Vec::new() };
        let to_saga = |saga_id: &str, command: SagaCommand| vec![Self::command_to(saga_id, &command)];
        let to_order = |command: OrderCommand| vec![OrderAggregate::command_to(&event.stream_id, &command)];
        match (event.stream_type.as_str(), event.event_type.as_str()) {
            // Its own steps: the next command of the state machine.
            (TYPE, "CreateOrderSagaStarted") => {
                let (Some(order_id), Some(customer_id), Some(order_total)) =
                    (step.order_id, step.customer_id, step.order_total)
                else {
                    return Vec::new();
                };
                if order_id != event.stream_id {
                    let reason = "ORDER_ID_IS_NOT_THE_SAGA_ID".to_owned();
                    return to_saga(&event.stream_id, SagaCommand::AbandonSaga { reason });
                }
                to_order(OrderCommand::CreateOrder { customer_id, order_total })
            }
            (TYPE, "OrderCreationRecorded") => {
                let (Some(order_id), Some(customer_id), Some(order_total)) =
                    (step.order_id, step.customer_id, step.order_total)
                else {
                    return Vec::new();
                };
                let reserve = CustomerCommand::ReserveCredit { order_id, order_total };
                vec![CustomerAggregate::command_to(&customer_id, &reserve)]
            }
            (TYPE, "CreditReservationRecorded") => to_order(OrderCommand::ApproveOrder),
            (TYPE, "CreditReleaseRequested") => {
                let Some(customer_id) = step.customer_id else { return Vec::new() };
                let release = CustomerCommand::ReleaseCredit { order_id: event.stream_id.clone() };
                vec![CustomerAggregate::command_to(&customer_id, &release)]
            }
            (TYPE, "CreditRefusalRecorded") => to_order(OrderCommand::RejectOrder {
                rejection_reason: step.rejection_reason.unwrap_or_default(),
            }),
            // The participants' replies, to the saga of their order.
            ("order", "OrderCreated") => to_saga(&event.stream_id, SagaCommand::RecordOrderCreated),
            ("order", "OrderApproved") => to_saga(&event.stream_id, SagaCommand::RecordOrderApproved),
            ("order", "OrderRejected") => to_saga(&event.stream_id, SagaCommand::RecordOrderRejected),
            ("customer", "CustomerCreditReserved") => match step.order_id {
                Some(order_id) => to_saga(&order_id, SagaCommand::RecordCreditReserved),
                None => Vec::new(),
            },
            ("customer", "CustomerCreditReservationFailed") => match step.order_id {
                Some(order_id) => to_saga(&order_id, SagaCommand::RecordCreditRefused),
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// A participant refused a step outright: the order could not be created (the saga
    /// ends), there is no such customer (the order is rejected, as in the choreography), or
    /// the order refused its approval (the saga ends and releases the reserved credit).
    fn on_rejected(
        state: Option<&CreateOrderSaga>,
        rejected_command: CommandRejected,
    ) -> Result<Vec<SagaEvent>, Rejection> {
        let Some(saga) = state else { return Ok(Vec::new()) };
        let code = rejected_command.code.as_str();
        let events = match (rejected_command.command_type.as_str(), saga.state) {
            ("CreateOrder", SagaState::CREATING_ORDER) => vec![rejected(saga, code.to_uppercase())],
            ("ReserveCredit", SagaState::RESERVING_CREDIT) => {
                let no_such_customer = ["customer_not_found", "invalid_target", "unknown_type"];
                let reason = if no_such_customer.contains(&code) {
                    UNKNOWN_CUSTOMER.to_owned()
                } else {
                    code.to_uppercase()
                };
                vec![SagaEvent::CreditRefusalRecorded {
                    order_id: saga.order_id.clone(),
                    rejection_reason: reason,
                }]
            }
            // The order refused its approval (another version of it refuses it): the credit
            // reserved for it goes back to the customer.
            ("ApproveOrder", SagaState::APPROVING) => vec![SagaEvent::CreditReleaseRequested {
                order_id: saga.order_id.clone(),
                customer_id: saga.customer_id.clone(),
                rejection_reason: code.to_uppercase(),
            }],
            // The order refused its rejection: nothing is reserved, the saga ends saying so.
            ("RejectOrder", SagaState::REJECTING) => vec![rejected(saga, code.to_uppercase())],
            // The customer refused the compensation (e.g. a version that does not take
            // `ReleaseCredit` from the saga): the credit stays reserved, visibly.
            ("ReleaseCredit", SagaState::REJECTED) if saga.release_refused.is_none() => {
                vec![SagaEvent::CreditReleaseRefused {
                    order_id: saga.order_id.clone(),
                    customer_id: saga.customer_id.clone(),
                    code: code.to_owned(),
                }]
            }
            _ => Vec::new(),
        };
        Ok(events)
    }
}

cairn_guest::export_aggregate!(CreateOrderSagaAggregate);

#[cfg(test)]
mod tests;
