//! The Order aggregate (after Eventuate's customers-and-orders example): an order is
//! created `PENDING`, then `APPROVED` when the customer's credit covers it or `REJECTED`
//! (`INSUFFICIENT_CREDIT`, or `UNKNOWN_CUSTOMER` when the customer does not exist).
//! Cancelling an approved order makes it `CANCELLED` and the customer releases the credit.

use cairn_guest::{
    Aggregate, CommandRejected, EventEnvelope, InternalCommand, OutgoingCommand, Rejection, Subscription,
    check_aggregate_id,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum OrderState {
    PENDING,
    APPROVED,
    REJECTED,
    CANCELLED,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub state: OrderState,
    pub customer_id: String,
    pub order_total: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
}

pub const INSUFFICIENT_CREDIT: &str = "INSUFFICIENT_CREDIT";
pub const UNKNOWN_CUSTOMER: &str = "UNKNOWN_CUSTOMER";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    CreateOrder {
        customer_id: String,
        order_total: i64,
    },
    CancelOrder,
    /// Saga steps: internal, sent only by this aggregate's reaction to the customer's
    /// credit decisions.
    ApproveOrder,
    RejectOrder {
        rejection_reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    OrderCreated { customer_id: String, order_total: i64 },
    OrderApproved,
    OrderRejected { rejection_reason: String },
    OrderCancelled { customer_id: String, order_total: i64 },
}

/// The customer events this aggregate reacts to, read by field name.
#[derive(Debug, Deserialize)]
struct CreditDecision {
    order_id: String,
}

pub struct OrderAggregate;

impl Aggregate for OrderAggregate {
    const TYPE: &'static str = "order";
    type State = Order;
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn handle(state: Option<&Order>, command: OrderCommand) -> Result<Vec<OrderEvent>, Rejection> {
        use OrderCommand::*;
        use OrderEvent::*;
        if let CreateOrder { customer_id, order_total } = command {
            if state.is_some() {
                return Err(Rejection::new("order_already_exists", "this order already exists"));
            }
            if customer_id.trim().is_empty() {
                return Err(Rejection::invalid("customer_id must not be empty"));
            }
            check_aggregate_id(&customer_id).map_err(|e| {
                Rejection::new("invalid_customer_id", format!("customer_id can never name a customer: {e}"))
            })?;
            if order_total <= 0 {
                return Err(Rejection::new(
                    "invalid_amount",
                    format!("order_total must be positive, got {order_total}"),
                ));
            }
            return Ok(vec![OrderCreated { customer_id, order_total }]);
        }
        let order = state.ok_or_else(|| Rejection::new("order_not_found", "no such order"))?;
        let events = match (command, order.state) {
            (CreateOrder { .. }, _) => unreachable!("handled above"),
            (CancelOrder, OrderState::APPROVED) => {
                vec![OrderCancelled {
                    customer_id: order.customer_id.clone(),
                    order_total: order.order_total,
                }]
            }
            (CancelOrder, other) => {
                return Err(Rejection::new(
                    "order_not_cancellable",
                    format!("only an APPROVED order can be cancelled; this one is {other:?}"),
                ));
            }
            (ApproveOrder, OrderState::PENDING) => vec![OrderApproved],
            (RejectOrder { rejection_reason }, OrderState::PENDING) => {
                vec![OrderRejected { rejection_reason }]
            }
            // A decision for an order that is no longer pending changes nothing.
            (ApproveOrder | RejectOrder { .. }, _) => Vec::new(),
        };
        Ok(events)
    }

    fn apply(state: Option<Order>, event: &OrderEvent) -> Order {
        use OrderEvent::*;
        if let OrderCreated { customer_id, order_total } = event {
            return Order {
                state: OrderState::PENDING,
                customer_id: customer_id.clone(),
                order_total: *order_total,
                rejection_reason: None,
            };
        }
        let mut order = state.expect("an order's first event is OrderCreated");
        match event {
            OrderCreated { .. } => unreachable!("handled above"),
            OrderApproved => order.state = OrderState::APPROVED,
            OrderRejected { rejection_reason } => {
                order.state = OrderState::REJECTED;
                order.rejection_reason = Some(rejection_reason.clone());
            }
            OrderCancelled { .. } => order.state = OrderState::CANCELLED,
        }
        order
    }

    /// Only the customer's answers to this order's own reservation.
    fn subscriptions() -> Vec<Subscription> {
        vec![
            Subscription::to("customer", ["CustomerCreditReserved", "CustomerCreditReservationFailed"])
                .replies_only(),
        ]
    }

    /// The customer's credit decision (the choreography) or the Create Order saga's
    /// orchestrator decides an order; nobody else.
    fn internal_commands() -> Vec<InternalCommand> {
        ["ApproveOrder", "RejectOrder"]
            .into_iter()
            .map(|command| InternalCommand::named(command).only_from(["customer", "create-order-saga"]))
            .collect()
    }

    /// Turn the customer's credit decision into the order's approval or rejection.
    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        let Ok(decision) = event.data::<CreditDecision>() else {
            return Vec::new();
        };
        let command = match event.event_type.as_str() {
            "CustomerCreditReserved" => OrderCommand::ApproveOrder,
            "CustomerCreditReservationFailed" => {
                OrderCommand::RejectOrder { rejection_reason: INSUFFICIENT_CREDIT.to_owned() }
            }
            _ => return Vec::new(),
        };
        vec![Self::command_to(&decision.order_id, &command)]
    }

    /// The customer refused the credit reservation outright: it does not exist.
    fn on_rejected(state: Option<&Order>, rejected: CommandRejected) -> Result<Vec<OrderEvent>, Rejection> {
        match state {
            Some(order) if order.state == OrderState::PENDING && rejected.command_type == "ReserveCredit" => {
                // No customer, or an id no customer can ever have (refused at creation by
                // this version; possible in orders stored before it).
                let no_such_customer = ["customer_not_found", "invalid_target", "unknown_type"];
                let rejection_reason = if no_such_customer.contains(&rejected.code.as_str()) {
                    UNKNOWN_CUSTOMER.to_owned()
                } else {
                    rejected.code.to_uppercase()
                };
                Ok(vec![OrderEvent::OrderRejected { rejection_reason }])
            }
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(not(feature = "library"))]
cairn_guest::export_aggregate!(OrderAggregate);

#[cfg(test)]
mod tests;
