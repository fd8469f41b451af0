//! The cursor rule: a subscriber's cursor is the highest position below which every effect
//! is done. Events are read in log order but finish out of order (streams run
//! concurrently), so the cursor is one below the lowest position still in flight, or the
//! last position read when nothing is.

use crate::store::Position;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    /// The last position read from the log (every event up to it is dispatched or skipped).
    read: Position,
    /// Dispatched events whose effects are not done yet.
    in_flight: BTreeSet<Position>,
}

impl Progress {
    /// Progress of a subscriber whose every event up to `cursor` is done.
    pub(super) fn from(cursor: Position) -> Self {
        Progress { read: cursor, in_flight: BTreeSet::new() }
    }

    /// Every event up to `position` has been read; those that matter were `start`ed.
    pub(super) fn read_up_to(&mut self, position: Position) {
        debug_assert!(position >= self.read, "the log is read in order");
        self.read = self.read.max(position);
    }

    /// `position` (already read) was dispatched and is not done yet.
    pub(super) fn start(&mut self, position: Position) {
        self.in_flight.insert(position);
    }

    /// The effects of `position` are done (delivered, or durably parked).
    pub(super) fn finish(&mut self, position: Position) {
        self.in_flight.remove(&position);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The highest position at or below which everything is done.
    pub(super) fn cursor(&self) -> Position {
        match self.in_flight.first() {
            Some(lowest) => *lowest - 1,
            None => self.read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;
    use crate::store::Position;

    fn reading(cursor: u64, positions: &[u64], up_to: u64) -> Progress {
        let mut progress = Progress::from(Position(cursor));
        for &p in positions {
            progress.start(Position(p));
        }
        progress.read_up_to(Position(up_to));
        progress
    }

    #[test]
    fn with_nothing_in_flight_the_cursor_is_the_last_position_read() {
        assert_eq!(Progress::from(Position(7)).cursor(), 7);
        assert_eq!(reading(7, &[], 20).cursor(), 20);
    }

    #[test]
    fn the_cursor_stops_below_the_lowest_undone_position() {
        let progress = reading(0, &[3, 5, 9], 12);
        assert_eq!(progress.cursor(), 2);
        assert_eq!(progress.in_flight(), 3);
    }

    #[test]
    fn later_positions_finishing_first_do_not_move_the_cursor_past_an_earlier_one() {
        let mut progress = reading(0, &[3, 5, 9], 12);
        progress.finish(Position(9));
        progress.finish(Position(5));
        assert_eq!(progress.cursor(), 2, "3 is still undone");
        progress.finish(Position(3));
        assert_eq!(progress.cursor(), 12, "all done: up to the last position read");
    }

    #[test]
    fn an_early_finish_moves_the_cursor_to_below_the_next_undone_one() {
        let mut progress = reading(10, &[11, 14, 15], 15);
        progress.finish(Position(11));
        assert_eq!(progress.cursor(), 13);
        progress.finish(Position(15));
        assert_eq!(progress.cursor(), 13);
        progress.start(Position(18));
        progress.read_up_to(Position(20));
        progress.finish(Position(14));
        assert_eq!(progress.cursor(), 17);
        progress.finish(Position(18));
        assert_eq!(progress.cursor(), 20);
    }

    #[test]
    fn the_cursor_never_moves_backwards_under_any_order_of_completions() {
        // Every permutation of finishing five in-flight positions.
        let positions = [2u64, 4, 5, 8, 9];
        let mut order: Vec<usize> = (0..positions.len()).collect();
        let mut permutations = 0;
        loop {
            let mut progress = reading(1, &positions, 10);
            let mut last = progress.cursor();
            let mut finished = Vec::new();
            for &i in &order {
                progress.finish(Position(positions[i]));
                finished.push(positions[i]);
                let cursor = progress.cursor();
                assert!(cursor >= last, "cursor went back from {last} to {cursor} in order {order:?}");
                // Every in-flight position at or below the cursor has finished.
                assert!(positions.iter().filter(|&&p| cursor >= p).all(|p| finished.contains(p)));
                last = cursor;
            }
            assert_eq!(last, 10);
            permutations += 1;
            if !next_permutation(&mut order) {
                break;
            }
        }
        assert_eq!(permutations, 120);
    }

    fn next_permutation(items: &mut [usize]) -> bool {
        let Some(i) = (1..items.len()).rev().find(|&i| items[i - 1] < items[i]) else {
            return false;
        };
        let j = (i..items.len()).rev().find(|&j| items[j] > items[i - 1]).unwrap();
        items.swap(i - 1, j);
        items[i..].reverse();
        true
    }
}
