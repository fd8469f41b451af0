//! Customer rules as given/when/then. Every scenario runs natively and on `customer.wasm`.

use super::*;
use CustomerCommand::*;
use CustomerEvent::*;
use cairn_guest::testing::envelope;
use cairn_testkit::{given, given_no_events, reactions};

fn fred() -> CustomerEvent {
    CustomerCreated { name: "Fred".into(), credit_limit: 200000 }
}

fn reserve(order_id: &str, order_total: i64) -> CustomerCommand {
    ReserveCredit { order_id: order_id.into(), order_total }
}

fn reserved(order_id: &str, order_total: i64) -> CustomerEvent {
    CustomerCreditReserved { order_id: order_id.into(), order_total }
}

fn available(expected: i64) -> impl Fn(&Customer) {
    move |c| assert_eq!(c.available_credit, expected)
}

#[test]
fn create_customer_with_a_credit_limit() {
    given_no_events::<CustomerAggregate>()
        .when(CreateCustomer { name: "Fred".into(), credit_limit: 200000 })
        .then_events([fred()])
        .then_state(available(200000));
}

#[test]
fn create_twice_is_rejected() {
    given::<CustomerAggregate>([fred()])
        .when(CreateCustomer { name: "Fred".into(), credit_limit: 1 })
        .then_rejected("customer_already_exists");
}

#[test]
fn a_negative_limit_or_empty_name_is_rejected() {
    given_no_events::<CustomerAggregate>()
        .when(CreateCustomer { name: "Fred".into(), credit_limit: -1 })
        .then_rejected("invalid_amount");
    given_no_events::<CustomerAggregate>()
        .when(CreateCustomer { name: "".into(), credit_limit: 1 })
        .then_rejected("invalid_command");
}

#[test]
fn seed_figures_123400_reserved_then_176600_refused() {
    given::<CustomerAggregate>([fred()])
        .when(reserve("o1", 123400))
        .then_events([reserved("o1", 123400)])
        .then_state(available(76600));
    given::<CustomerAggregate>([fred(), reserved("o1", 123400)])
        .when(reserve("o2", 176600))
        .then_events([CustomerCreditReservationFailed { order_id: "o2".into(), order_total: 176600 }])
        .then_state(available(76600));
}

#[test]
fn an_order_equal_to_the_available_credit_is_reserved() {
    given::<CustomerAggregate>([fred(), reserved("o1", 123400)])
        .when(reserve("o2", 76600))
        .then_events([reserved("o2", 76600)])
        .then_state(available(0));
}

#[test]
fn release_gives_the_credit_back_and_150000_then_fits() {
    let history = [fred(), reserved("o1", 123400)];
    given::<CustomerAggregate>(history.clone())
        .when(ReleaseCredit { order_id: "o1".into() })
        .then_events([CustomerCreditReleased { order_id: "o1".into(), order_total: 123400 }])
        .then_state(available(200000));
    let released = CustomerCreditReleased { order_id: "o1".into(), order_total: 123400 };
    given::<CustomerAggregate>([fred(), reserved("o1", 123400), released])
        .when(reserve("o3", 150000))
        .then_events([reserved("o3", 150000)])
        .then_state(available(50000));
}

#[test]
fn reserving_twice_for_one_order_changes_nothing() {
    given::<CustomerAggregate>([fred(), reserved("o1", 100)]).when(reserve("o1", 100)).then_no_events();
}

#[test]
fn releasing_an_unknown_reservation_changes_nothing() {
    given::<CustomerAggregate>([fred()]).when(ReleaseCredit { order_id: "o9".into() }).then_no_events();
}

#[test]
fn a_non_positive_order_total_is_rejected() {
    given::<CustomerAggregate>([fred()]).when(reserve("o1", 0)).then_rejected("invalid_amount");
}

#[test]
fn credit_commands_for_a_missing_customer_are_rejected() {
    given_no_events::<CustomerAggregate>().when(reserve("o1", 5)).then_rejected("customer_not_found");
    given_no_events::<CustomerAggregate>()
        .when(ReleaseCredit { order_id: "o1".into() })
        .then_rejected("customer_not_found");
}

/// Another aggregate's events, mirrored by field name (event names are domain words).
#[derive(serde::Serialize)]
#[allow(clippy::enum_variant_names)]
enum OrderEvent {
    OrderCreated { customer_id: String, order_total: i64 },
    OrderCancelled { customer_id: String, order_total: i64 },
}

#[test]
fn a_new_order_reserves_credit_and_a_cancelled_one_releases_it() {
    let created = OrderEvent::OrderCreated { customer_id: "c1".into(), order_total: 123400 };
    #[derive(serde::Serialize)]
    struct Reserve {
        order_id: &'static str,
        order_total: i64,
    }
    assert_eq!(
        reactions::<CustomerAggregate>(&envelope("order", "o1", 1, &created)),
        vec![OutgoingCommand::new(
            "customer",
            "c1",
            "ReserveCredit",
            &Reserve { order_id: "o1", order_total: 123400 }
        )]
    );
    let cancelled = OrderEvent::OrderCancelled { customer_id: "c1".into(), order_total: 123400 };
    #[derive(serde::Serialize)]
    struct Release {
        order_id: &'static str,
    }
    assert_eq!(
        reactions::<CustomerAggregate>(&envelope("order", "o1", 3, &cancelled)),
        vec![OutgoingCommand::new("customer", "c1", "ReleaseCredit", &Release { order_id: "o1" })]
    );
}

/// An order a saga created (the orchestrator's routed `CreateOrder`, so it has a cause) is
/// that saga's to drive: the choreography reserves nothing for it.
#[test]
fn an_order_a_saga_created_is_left_to_the_saga() {
    let created = OrderEvent::OrderCreated { customer_id: "c1".into(), order_total: 5 };
    let from_a_client = envelope("order", "o1", 1, &created);
    assert_eq!(reactions::<CustomerAggregate>(&from_a_client).len(), 1);
    let mut from_a_saga = from_a_client;
    from_a_saga.causation_id = Some("7".into());
    assert!(reactions::<CustomerAggregate>(&from_a_saga).is_empty());
}
