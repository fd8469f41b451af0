//! What an aggregate id may be. The host addresses every aggregate instance as
//! `/aggregates/{type}/{id}` and keys its stream as `type/id`, so an id that breaks that
//! shape can never name an aggregate. Guests check ids they are given to pass on (a
//! transfer's target account, an order's customer) with the same rule, so such a command is
//! refused when it is created instead of failing later inside a saga.

use std::fmt;

/// The longest aggregate id, in bytes.
pub const MAX_ID_LEN: usize = 200;

/// Why a string can never be an aggregate id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidId {
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    /// It contains `/` or a control character.
    BadCharacter,
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidId::Empty => write!(f, "an aggregate id must not be empty"),
            InvalidId::TooLong { len, max } => {
                write!(f, "an aggregate id is at most {max} bytes, this one has {len}")
            }
            InvalidId::BadCharacter => {
                write!(f, "an aggregate id must not contain '/' or control characters")
            }
        }
    }
}

impl std::error::Error for InvalidId {}

/// Check that `id` can name an aggregate instance.
pub fn check_aggregate_id(id: &str) -> Result<(), InvalidId> {
    if id.is_empty() {
        return Err(InvalidId::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong { len: id.len(), max: MAX_ID_LEN });
    }
    if id.chars().any(|c| c == '/' || c.is_control()) {
        return Err(InvalidId::BadCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_fit_a_url_path_segment_and_a_stream_key_are_valid() {
        for id in ["101", "a-b_c.d", "üñï", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(check_aggregate_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn empty_long_slashed_and_control_ids_are_not() {
        assert_eq!(check_aggregate_id(""), Err(InvalidId::Empty));
        assert_eq!(
            check_aggregate_id(&"x".repeat(301)),
            Err(InvalidId::TooLong { len: 301, max: MAX_ID_LEN })
        );
        assert_eq!(check_aggregate_id("a/b"), Err(InvalidId::BadCharacter));
        assert_eq!(check_aggregate_id("a\nb"), Err(InvalidId::BadCharacter));
    }
}
