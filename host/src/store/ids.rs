//! Counters as types of their own: a place in the global log ([`Position`]), a place in one
//! stream ([`Version`]) and the number of a component's deployed version
//! ([`ComponentVersion`], which every stored event records) are plain integers on disk and
//! over HTTP, but never each other. All count from 1; 0 means "none yet".

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

macro_rules! counter {
    ($(#[$doc:meta])* $name:ident($int:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $int);

        impl $name {
            /// None yet: before the first one.
            pub const ZERO: $name = $name(0);
            pub const MAX: $name = $name(<$int>::MAX);

            pub const fn get(self) -> $int {
                self.0
            }

            /// How many places `self` is after `earlier` (0 when it is not).
            pub const fn saturating_sub(self, earlier: $name) -> $int {
                self.0.saturating_sub(earlier.0)
            }

            /// `places` further on, stopping at the largest value.
            pub const fn saturating_add(self, places: $int) -> $name {
                $name(self.0.saturating_add(places))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$name> for $int {
            fn from(value: $name) -> $int {
                value.0
            }
        }

        impl Add<$int> for $name {
            type Output = $name;
            fn add(self, places: $int) -> $name {
                $name(self.0 + places)
            }
        }

        impl AddAssign<$int> for $name {
            fn add_assign(&mut self, places: $int) {
                self.0 += places;
            }
        }

        impl Sub<$int> for $name {
            type Output = $name;
            fn sub(self, places: $int) -> $name {
                $name(self.0 - places)
            }
        }

        impl PartialEq<$int> for $name {
            fn eq(&self, other: &$int) -> bool {
                self.0 == *other
            }
        }

        impl PartialOrd<$int> for $name {
            fn partial_cmp(&self, other: &$int) -> Option<std::cmp::Ordering> {
                self.0.partial_cmp(other)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                text.parse().map($name)
            }
        }
    };
}

counter!(
    /// A place in the one global log; the first event is at 1.
    Position(u64)
);
counter!(
    /// A place in one stream: the number of its events up to and with this one; the first
    /// event is version 1.
    Version(u64)
);
counter!(
    /// The number of one deployed version of a component, from 1 per component; a number is
    /// never given twice, deleted versions included.
    ComponentVersion(u32)
);
