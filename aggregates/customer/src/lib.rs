//! The Customer aggregate (after Eventuate's customers-and-orders example): a credit
//! limit from which orders reserve credit. An order is approved when its total fits in
//! the available credit (an order equal to it fits); cancelling releases the reservation.

use cairn_guest::{Aggregate, EventEnvelope, InternalCommand, OutgoingCommand, Rejection, Subscription};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub name: String,
    pub credit_limit: i64,
    /// `credit_limit` less every reservation; kept in the state so readers need no sum.
    pub available_credit: i64,
    /// Reserved amount per order id.
    pub credit_reservations: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerCommand {
    CreateCustomer {
        name: String,
        credit_limit: i64,
    },
    /// Saga step (internal): sent only by this aggregate's reaction to `OrderCreated`.
    ReserveCredit {
        order_id: String,
        order_total: i64,
    },
    /// Saga step (internal): sent by this aggregate's reaction to `OrderCancelled`, or by
    /// the Create Order saga's orchestrator when the order refuses its approval.
    ReleaseCredit {
        order_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerEvent {
    CustomerCreated { name: String, credit_limit: i64 },
    CustomerCreditReserved { order_id: String, order_total: i64 },
    CustomerCreditReservationFailed { order_id: String, order_total: i64 },
    CustomerCreditReleased { order_id: String, order_total: i64 },
}

/// The order events this aggregate reacts to, read by field name.
#[derive(Debug, Deserialize)]
struct OrderFacts {
    customer_id: String,
    order_total: i64,
}

pub struct CustomerAggregate;

impl Aggregate for CustomerAggregate {
    const TYPE: &'static str = "customer";
    type State = Customer;
    type Command = CustomerCommand;
    type Event = CustomerEvent;

    fn handle(state: Option<&Customer>, command: CustomerCommand) -> Result<Vec<CustomerEvent>, Rejection> {
        use CustomerCommand::*;
        use CustomerEvent::*;
        if let CreateCustomer { name, credit_limit } = command {
            if state.is_some() {
                return Err(Rejection::new("customer_already_exists", "this customer already exists"));
            }
            if name.trim().is_empty() {
                return Err(Rejection::invalid("name must not be empty"));
            }
            if credit_limit < 0 {
                return Err(Rejection::new(
                    "invalid_amount",
                    format!("credit_limit must not be negative, got {credit_limit}"),
                ));
            }
            return Ok(vec![CustomerCreated { name, credit_limit }]);
        }
        let customer = state.ok_or_else(|| Rejection::new("customer_not_found", "no such customer"))?;
        let events = match command {
            CreateCustomer { .. } => unreachable!("handled above"),
            ReserveCredit { order_id, order_total } => {
                if order_total <= 0 {
                    return Err(Rejection::new(
                        "invalid_amount",
                        format!("order_total must be positive, got {order_total}"),
                    ));
                }
                if customer.credit_reservations.contains_key(&order_id) {
                    Vec::new()
                } else if order_total <= customer.available_credit {
                    vec![CustomerCreditReserved { order_id, order_total }]
                } else {
                    vec![CustomerCreditReservationFailed { order_id, order_total }]
                }
            }
            ReleaseCredit { order_id } => match customer.credit_reservations.get(&order_id) {
                Some(&order_total) => vec![CustomerCreditReleased { order_id, order_total }],
                None => Vec::new(),
            },
        };
        Ok(events)
    }

    fn apply(state: Option<Customer>, event: &CustomerEvent) -> Customer {
        use CustomerEvent::*;
        if let CustomerCreated { name, credit_limit } = event {
            return Customer {
                name: name.clone(),
                credit_limit: *credit_limit,
                available_credit: *credit_limit,
                credit_reservations: BTreeMap::new(),
            };
        }
        let mut customer = state.expect("a customer's first event is CustomerCreated");
        match event {
            CustomerCreated { .. } => unreachable!("handled above"),
            CustomerCreditReserved { order_id, order_total } => {
                customer.credit_reservations.insert(order_id.clone(), *order_total);
                customer.available_credit -= order_total;
            }
            CustomerCreditReservationFailed { .. } => {}
            CustomerCreditReleased { order_id, order_total } => {
                customer.credit_reservations.remove(order_id);
                customer.available_credit += order_total;
            }
        }
        customer
    }

    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("order", ["OrderCreated", "OrderCancelled"])]
    }

    /// Reservations come from the order's events (the choreography) or from the Create
    /// Order saga's orchestrator; releases from a cancelled order or from the orchestrator's
    /// compensation.
    fn internal_commands() -> Vec<InternalCommand> {
        vec![
            InternalCommand::named("ReserveCredit").only_from(["order", "create-order-saga"]),
            InternalCommand::named("ReleaseCredit").only_from(["order", "create-order-saga"]),
        ]
    }

    /// Reserve credit for a new order; release it when the order is cancelled. An order a
    /// saga created (a routed command, so it has a cause) is that saga's to drive: the
    /// orchestrator reserves its credit itself.
    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        let Ok(order) = event.data::<OrderFacts>() else {
            return Vec::new();
        };
        if event.event_type == "OrderCreated" && event.causation_id.is_some() {
            return Vec::new();
        }
        let order_id = event.stream_id.clone();
        let command = match event.event_type.as_str() {
            "OrderCreated" => CustomerCommand::ReserveCredit { order_id, order_total: order.order_total },
            "OrderCancelled" => CustomerCommand::ReleaseCredit { order_id },
            _ => return Vec::new(),
        };
        vec![Self::command_to(&order.customer_id, &command)]
    }
}

#[cfg(not(feature = "library"))]
cairn_guest::export_aggregate!(CustomerAggregate);

#[cfg(test)]
mod tests;
