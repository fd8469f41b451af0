//! Builds the components only tests load (see `guest_build.rs`): guests that misbehave on
//! command, their fixed and broken versions, and fragile projections.

#[path = "../../../aggregates/artifacts/guest_build.rs"]
mod guest_build;

use guest_build::Guest;

const GUESTS: &[Guest] = &[
    ("faulty", "FAULTY", "tests/guests/faulty"),
    ("faulty-fixed", "FAULTY_FIXED", "tests/guests/faulty-fixed"),
    ("twin", "TWIN", "tests/guests/twin"),
    ("faulty-broken", "FAULTY_BROKEN", "tests/guests/faulty-broken"),
    ("faulty-upcast", "FAULTY_UPCAST", "tests/guests/faulty-upcast"),
    ("hanging-describe", "HANGING_DESCRIBE", "tests/guests/hanging-describe"),
    ("fragile-view", "FRAGILE_VIEW", "tests/guests/fragile-view"),
    ("fragile-view-fixed", "FRAGILE_VIEW_FIXED", "tests/guests/fragile-view-fixed"),
];

fn main() {
    guest_build::build(GUESTS, &[], &[], &["tests/guests/misbehave", "aggregates/artifacts/guest_build.rs"]);
}
