//! A test-only aggregate that misbehaves on command, to prove the sandbox: a trap or a
//! timeout answers an error, stores nothing, and the actor goes on serving. Its reactions
//! misbehave too, to prove the router parks what it cannot deliver and goes on.

use cairn_guest::{Aggregate, EventEnvelope, OutgoingCommand, Rejection, Subscription};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Counter {
    pub count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FaultyCommand {
    Increment,
    Panic,
    Spin,
    Hog,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FaultyEvent {
    Incremented,
}

pub struct Faulty;

impl Aggregate for Faulty {
    const TYPE: &'static str = "faulty";
    type State = Counter;
    type Command = FaultyCommand;
    type Event = FaultyEvent;

    fn handle(state: Option<&Counter>, command: FaultyCommand) -> Result<Vec<FaultyEvent>, Rejection> {
        match command {
            FaultyCommand::Increment => Ok(vec![FaultyEvent::Incremented]),
            FaultyCommand::Panic => panic!("asked to panic"),
            FaultyCommand::Spin => {
                let mut n = state.map_or(0, |s| s.count);
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            FaultyCommand::Hog => {
                let hog: Vec<u8> = vec![1; 1 << 30];
                Err(Rejection::new("unreachable", format!("{}", hog.len())))
            }
        }
    }

    fn apply(state: Option<Counter>, _event: &FaultyEvent) -> Counter {
        Counter { count: state.map_or(0, |s| s.count) + 1 }
    }

    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("account", ["AccountOpened", "AccountClosed"])]
    }

    /// An opened account makes it send a command to a type nobody deployed; a closed one
    /// makes the reaction itself trap.
    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        #[derive(Serialize)]
        struct NoFields {}
        match event.event_type.as_str() {
            "AccountOpened" => {
                vec![OutgoingCommand::new("nowhere", &event.stream_id, "Anything", &NoFields {})]
            }
            _ => panic!("asked to fail a reaction"),
        }
    }
}

cairn_guest::export_aggregate!(Faulty);
