//! Columns aligned for a terminal, as `kubectl get` prints them: a header in capitals, each
//! column as wide as its widest cell, three spaces between columns, numbers to the right.

use console::{Alignment, Style, measure_text_width, pad_str};

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table being filled row by row; [`Table::render`] lays it out.
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// One row: a cell per column (styled cells keep their width: escapes are not counted).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "a cell for every column");
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and the rows, one line each, with no trailing spaces.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(i).map(|cell| measure_text_width(cell)))
                    .chain([title.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header = Style::new().bold();
        let mut lines = Vec::with_capacity(self.rows.len() + 1);
        let titles: Vec<String> =
            self.columns.iter().map(|(title, _)| header.apply_to(title).to_string()).collect();
        lines.push(self.line(&titles, &widths));
        lines.extend(self.rows.iter().map(|row| self.line(row, &widths)));
        lines.join("\n")
    }

    fn line(&self, cells: &[String], widths: &[usize]) -> String {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .zip(&self.columns)
            .enumerate()
            .map(|(i, ((cell, &width), (_, align)))| match align {
                Align::Right => pad_str(cell, width, Alignment::Right, None).into_owned(),
                // The last column is not padded: no trailing spaces.
                Align::Left if i == last => cell.clone(),
                Align::Left => pad_str(cell, width, Alignment::Left, None).into_owned(),
            })
            .collect();
        padded.join("   ").trim_end().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{Align, Table};

    #[test]
    fn columns_take_their_widest_cell_and_numbers_line_up_right() {
        let mut table = Table::new(&[("NAME", Align::Left), ("LAG", Align::Right), ("STATUS", Align::Left)]);
        table.row(vec!["account-info".into(), "7".into(), "running".into()]);
        table.row(vec!["x".into(), "1200".into(), "".into()]);
        console::set_colors_enabled(false);
        assert_eq!(
            table.render(),
            "NAME            LAG   STATUS\naccount-info      7   running\nx              1200"
        );
    }
}
