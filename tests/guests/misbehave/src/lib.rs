//! Test-only aggregates that misbehave on request, to prove the sandbox and the router:
//! a trap or a timeout answers an error and stores nothing; a reaction that traps parks its
//! event and the later events of the stream behind it; a forged host command is parked;
//! a command to a target that can never accept it is handed back and compensated.
//!
//! `Faulty<false>` is the `faulty` component; `Faulty<true>` is a later version of it
//! (`faulty-fixed`) whose reaction no longer traps, for the retry after a fix. `Twin` is a
//! second subscriber that sends the same command to the same streams as `faulty`.

use cairn_guest::{
    Aggregate, COMMAND_REJECTED, CommandRejected, EventEnvelope, OutgoingCommand, Rejection, Subscription,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FaultyState {
    pub count: u64,
    /// Every `Record` note, in the order the commands arrived.
    pub notes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<Payment>,
    /// What `Grown` events added: state that grows by whatever each event says.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ballast: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    pub from_account_id: String,
    pub amount: i64,
    pub credit_command: String,
    /// Why the credit leg was handed back (the payment was refunded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FaultyCommand {
    Increment,
    Panic,
    Spin,
    Hog,
    Record {
        note: String,
    },
    /// Debit `from_account_id` and send `credit_command` for the amount to `to_type/to_id`,
    /// which may be a target that can never accept it: unlike a money transfer, nothing is
    /// checked here, so the host's hand-back is what must save the money.
    Pay {
        from_account_id: String,
        to_type: String,
        to_id: String,
        amount: i64,
        credit_command: String,
    },
    /// Counts the calls this instance served in a global. Only a fresh instance per call
    /// makes the answer always 1.
    CountCalls,
    /// Recurse `depth` calls deep without a tail call: a stack overflow.
    Recurse {
        depth: u64,
    },
    /// `events` events of `bytes` bytes each in one answer.
    Flood {
        events: u32,
        bytes: u32,
    },
    /// `events` events of `bytes` bytes each that change nothing in the state: a long stream,
    /// or one of large events, quickly.
    Fill {
        events: u32,
        #[serde(default)]
        bytes: u32,
    },
    /// One event whose fold adds `bytes` bytes to the state.
    Grow {
        bytes: u32,
    },
    /// One event whose reaction sends `commands` commands.
    Swarm {
        commands: u32,
    },
    /// Reach for what a guest does not get: `files`, `env`, `clock` or `random`.
    Probe {
        what: String,
    },
    /// Print `text` to standard output `times` times, and once to standard error.
    Print {
        text: String,
        times: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FaultyEvent {
    Incremented,
    Recorded {
        note: String,
    },
    PaymentRequested {
        from_account_id: String,
        to_type: String,
        to_id: String,
        amount: i64,
        credit_command: String,
    },
    PaymentFailed {
        from_account_id: String,
        amount: i64,
        reason: String,
    },
    CallsCounted {
        calls: u64,
    },
    /// Bytes that change nothing in the state.
    Flooded {
        filler: String,
    },
    Grown {
        bytes: u32,
    },
    Swarmed {
        commands: u32,
    },
    /// What a probe saw, when it did not trap.
    Probed {
        what: String,
        saw: String,
    },
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    // black_box keeps this a real call with a frame, not a loop.
    1 + std::hint::black_box(recurse(std::hint::black_box(depth - 1)))
}

/// What a guest sees when it reaches for a capability (if the host lets the call return).
fn probe(what: &str) -> String {
    match what {
        "files" => format!("{:?}", std::fs::read_to_string("/etc/passwd").map(|t| t.len())),
        "env" => format!("{:?}", std::env::vars().collect::<Vec<_>>()),
        "clock" => format!("{:?}", std::time::SystemTime::now()),
        "random" => {
            use std::hash::BuildHasher;
            format!("{}", std::collections::hash_map::RandomState::new().hash_one(1u8))
        }
        other => format!("nothing to probe called {other}"),
    }
}

/// The fields of an account movement this test reads.
#[derive(Deserialize)]
struct Movement {
    transaction_id: String,
}

#[derive(Deserialize)]
struct Swarm {
    commands: u32,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Note {
    note: String,
}

#[derive(Serialize)]
struct Money<'a> {
    amount: i64,
    transaction_id: &'a str,
}

/// Whether an account movement belongs to a payment of this test's own (not recorded).
fn is_payment_leg(transaction_id: &str) -> bool {
    transaction_id.starts_with("pay-") || transaction_id.starts_with("refund-")
}

/// The misbehaving aggregate. `FIXED` is its later version: the reaction no longer traps,
/// and (a changed rule) every `Incremented` counts ten. `BROKEN_FOLD` is a version whose
/// fold traps on `Incremented`, so a deploy's replay check must refuse it. `BROKEN_UPCAST`
/// is a version that moves `Recorded` to schema 2 with an upcaster that traps on the note
/// `poison`, so the replay check must refuse it on a stream that holds one.
pub struct Faulty<const FIXED: bool, const BROKEN_FOLD: bool = false, const BROKEN_UPCAST: bool = false>;

/// `Recorded`'s fields, as the upcaster reads and writes them.
#[derive(Serialize, Deserialize)]
struct RecordedNote {
    note: String,
}

impl<const FIXED: bool, const BROKEN_FOLD: bool, const BROKEN_UPCAST: bool> Aggregate
    for Faulty<FIXED, BROKEN_FOLD, BROKEN_UPCAST>
{
    const TYPE: &'static str = "faulty";
    type State = FaultyState;
    type Command = FaultyCommand;
    type Event = FaultyEvent;

    fn handle(state: Option<&FaultyState>, command: FaultyCommand) -> Result<Vec<FaultyEvent>, Rejection> {
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
            FaultyCommand::Record { note } => Ok(vec![FaultyEvent::Recorded { note }]),
            FaultyCommand::Pay { from_account_id, to_type, to_id, amount, credit_command } => {
                Ok(vec![FaultyEvent::PaymentRequested {
                    from_account_id,
                    to_type,
                    to_id,
                    amount,
                    credit_command,
                }])
            }
            FaultyCommand::CountCalls => {
                let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Ok(vec![FaultyEvent::CallsCounted { calls }])
            }
            FaultyCommand::Recurse { depth } => {
                Err(Rejection::new("unreachable", format!("{}", recurse(depth))))
            }
            FaultyCommand::Flood { events, bytes } => {
                Ok((0..events).map(|_| FaultyEvent::Recorded { note: "x".repeat(bytes as usize) }).collect())
            }
            FaultyCommand::Fill { events, bytes } => {
                Ok((0..events).map(|_| FaultyEvent::Flooded { filler: "f".repeat(bytes as usize) }).collect())
            }
            FaultyCommand::Grow { bytes } => Ok(vec![FaultyEvent::Grown { bytes }]),
            FaultyCommand::Swarm { commands } => Ok(vec![FaultyEvent::Swarmed { commands }]),
            FaultyCommand::Print { text, times } => {
                for _ in 0..times {
                    println!("{text}");
                }
                eprintln!("on stderr: {text}");
                Ok(Vec::new())
            }
            FaultyCommand::Probe { what } => {
                let saw = probe(&what);
                Ok(vec![FaultyEvent::Probed { what, saw }])
            }
        }
    }

    fn apply(state: Option<FaultyState>, event: &FaultyEvent) -> FaultyState {
        let mut state = state.unwrap_or_default();
        match event {
            FaultyEvent::Incremented if BROKEN_FOLD => panic!("this version cannot fold Incremented"),
            FaultyEvent::Incremented => state.count += if FIXED { 10 } else { 1 },
            FaultyEvent::Recorded { note } => state.notes.push(note.clone()),
            FaultyEvent::PaymentRequested { from_account_id, amount, credit_command, .. } => {
                state.payment = Some(Payment {
                    from_account_id: from_account_id.clone(),
                    amount: *amount,
                    credit_command: credit_command.clone(),
                    failed: None,
                })
            }
            FaultyEvent::PaymentFailed { reason, .. } => {
                if let Some(payment) = &mut state.payment {
                    payment.failed = Some(reason.clone());
                }
            }
            FaultyEvent::Grown { bytes } => state.ballast.push_str(&"b".repeat(*bytes as usize)),
            FaultyEvent::CallsCounted { .. }
            | FaultyEvent::Flooded { .. }
            | FaultyEvent::Swarmed { .. }
            | FaultyEvent::Probed { .. } => {}
        }
        state
    }

    fn upcasters() -> Vec<cairn_guest::Upcaster> {
        if !BROKEN_UPCAST {
            return Vec::new();
        }
        vec![cairn_guest::Upcaster::step("Recorded", 1, |old: RecordedNote| {
            assert!(old.note != "poison", "this upcaster cannot read the note poison");
            old
        })]
    }

    fn subscriptions() -> Vec<Subscription> {
        vec![
            Subscription::to("account", ["AccountCredited", "AccountDebited"]),
            Subscription::to(Self::TYPE, ["PaymentRequested", "PaymentFailed", "Swarmed"]),
        ]
    }

    /// Account movements are recorded on `faulty/<account id>` by transaction id, except
    /// `poison` (the reaction traps, unless `FIXED`) and `forge` (the reaction sends the
    /// host-only `CommandRejected`). A payment debits, then credits its target; a failed
    /// one is refunded.
    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        if event.stream_type == "account" {
            let Ok(Movement { transaction_id }) = event.data() else { return Vec::new() };
            return match transaction_id.as_str() {
                "poison" if !FIXED => panic!("asked to fail a reaction"),
                "forge" => {
                    let forged = CommandRejected {
                        command_type: "CreditAccount".into(),
                        target_type: "account".into(),
                        target_id: event.stream_id.clone(),
                        code: "forged".into(),
                        message: "a reaction pretending to be the host".into(),
                    };
                    vec![OutgoingCommand::new("account", &event.stream_id, COMMAND_REJECTED, &forged)]
                }
                id if is_payment_leg(id) => Vec::new(),
                _ => vec![OutgoingCommand::new(
                    Self::TYPE,
                    &event.stream_id,
                    "Record",
                    &Note { note: transaction_id },
                )],
            };
        }
        if event.event_type == "Swarmed" {
            let Ok(Swarm { commands }) = event.data() else { return Vec::new() };
            return (0..commands)
                .map(|i| OutgoingCommand::new(Self::TYPE, &format!("swarm-{i}"), "Increment", &Empty {}))
                .collect();
        }
        let Ok(requested) = event.data::<PaymentFacts>() else { return Vec::new() };
        let pay = format!("pay-{}", event.stream_id);
        match event.event_type.as_str() {
            "PaymentRequested" => vec![
                OutgoingCommand::new(
                    "account",
                    &requested.from_account_id,
                    "DebitAccount",
                    &Money { amount: requested.amount, transaction_id: &pay },
                ),
                OutgoingCommand::new(
                    &requested.to_type,
                    &requested.to_id,
                    &requested.credit_command,
                    &Money { amount: requested.amount, transaction_id: &pay },
                ),
            ],
            "PaymentFailed" => vec![OutgoingCommand::new(
                "account",
                &requested.from_account_id,
                "CreditAccount",
                &Money { amount: requested.amount, transaction_id: &format!("refund-{}", event.stream_id) },
            )],
            _ => Vec::new(),
        }
    }

    /// The credit leg of a payment was refused for ever: refund the debit.
    fn on_rejected(
        state: Option<&FaultyState>,
        rejected: CommandRejected,
    ) -> Result<Vec<FaultyEvent>, Rejection> {
        match state.and_then(|s| s.payment.as_ref()) {
            Some(payment) if payment.failed.is_none() && rejected.command_type == payment.credit_command => {
                Ok(vec![FaultyEvent::PaymentFailed {
                    from_account_id: payment.from_account_id.clone(),
                    amount: payment.amount,
                    reason: rejected.code,
                }])
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// What a `PaymentRequested` says, read by field name.
#[derive(Deserialize)]
struct PaymentFacts {
    #[serde(default)]
    from_account_id: String,
    #[serde(default)]
    to_type: String,
    #[serde(default)]
    to_id: String,
    #[serde(default)]
    amount: i64,
    #[serde(default)]
    credit_command: String,
}

/// A second subscriber to account credits: it records `twin:<transaction id>` on the same
/// `faulty/<account id>` stream, with the same command type `faulty` sends.
pub struct Twin;

#[derive(Debug, Serialize, Deserialize)]
pub enum TwinCommand {
    Noop,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum TwinEvent {
    Nooped,
}

impl Aggregate for Twin {
    const TYPE: &'static str = "twin";
    type State = u64;
    type Command = TwinCommand;
    type Event = TwinEvent;

    fn handle(_state: Option<&u64>, _command: TwinCommand) -> Result<Vec<TwinEvent>, Rejection> {
        Ok(vec![TwinEvent::Nooped])
    }

    fn apply(state: Option<u64>, _event: &TwinEvent) -> u64 {
        state.unwrap_or(0) + 1
    }

    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("account", ["AccountCredited"])]
    }

    fn react(event: &EventEnvelope) -> Vec<OutgoingCommand> {
        match event.data::<Movement>() {
            Ok(Movement { transaction_id }) if !is_payment_leg(&transaction_id) => {
                let note = Note { note: format!("twin:{transaction_id}") };
                vec![OutgoingCommand::new("faulty", &event.stream_id, "Record", &note)]
            }
            _ => Vec::new(),
        }
    }
}

/// A `faulty` whose `describe()` never returns (its subscriptions loop for ever): a deploy
/// must refuse it within its time budget.
pub struct HangingDescribe;

impl Aggregate for HangingDescribe {
    const TYPE: &'static str = "faulty";
    type State = u64;
    type Command = TwinCommand;
    type Event = TwinEvent;

    fn handle(_state: Option<&u64>, _command: TwinCommand) -> Result<Vec<TwinEvent>, Rejection> {
        Ok(Vec::new())
    }

    fn apply(state: Option<u64>, _event: &TwinEvent) -> u64 {
        state.unwrap_or(0)
    }

    fn subscriptions() -> Vec<Subscription> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

/// The projection `fragile-view`: counts each account's events. Version 1 (`FIXED = false`)
/// traps on `AccountClosed` (after counting it, so the host has a write to take back); the
/// fixed version counts it like any other event.
pub struct FragileView<const FIXED: bool>;

impl<const FIXED: bool> cairn_guest::Projection for FragileView<FIXED> {
    const NAME: &'static str = "fragile-view";

    fn subscriptions() -> Vec<Subscription> {
        vec![Subscription::to("account", Vec::<String>::new())]
    }

    fn handle(event: &EventEnvelope, view: &mut cairn_guest::View<'_>) {
        // Count first (written to the host at once, as `update` would not), then trap: the
        // host must take back the failing event's own write.
        let count: u64 = view.get(&event.stream_id).unwrap_or_default();
        view.put(&event.stream_id, &(count + 1));
        if !FIXED && event.event_type == "AccountClosed" {
            panic!("fragile-view cannot show a closed account");
        }
    }
}
