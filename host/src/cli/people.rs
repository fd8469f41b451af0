//! Answers as a person reads them in a terminal: lists as tables, other answers as one line.
//! Colour goes only to a terminal (`console` checks it, and honours `NO_COLOR` and
//! `CLICOLOR_FORCE`); `--json` bypasses all of this and prints the host's JSON unchanged.

use super::table::{Align, Table};
use console::style;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// How one command's successful answer is shown to a person.
pub type Render = fn(&Value, &HeaderMap) -> String;

/// A field as a cell: strings bare, `null` or absent as `-`, anything else as compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => printable(text),
        other => other.to_string(),
    }
}

/// Text from the host with its control characters escaped: a stream id or an error message
/// is written by clients and guests, and must not move the cursor or recolour the terminal.
pub(super) fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

fn list<'a>(value: &'a Value, field: &str) -> &'a [Value] {
    value[field].as_array().map_or(&[], Vec::as_slice)
}

/// A status word, green when all is well, yellow while it moves, red when it stopped.
fn status(word: &str) -> String {
    match word {
        "running" | "yes" | "active" => style(word).green().to_string(),
        "failed" | "no" => style(word).red().to_string(),
        "-" => word.to_owned(),
        _ => style(word).yellow().to_string(),
    }
}

fn yes_no(value: &Value) -> String {
    match value.as_bool() {
        Some(true) => status("yes"),
        Some(false) => status("no"),
        None => "-".to_owned(),
    }
}

/// The first 12 hex digits of a `sha256:` digest: enough to tell versions apart.
fn short_digest(digest: &Value) -> String {
    let hex = digest.as_str().unwrap_or("-").trim_start_matches("sha256:");
    hex.chars().take(12).collect()
}

fn byte_size(bytes: &Value) -> String {
    match bytes.as_u64() {
        Some(n) if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        Some(n) if n >= 1 << 10 => format!("{} KiB", n >> 10),
        Some(n) => format!("{n} B"),
        None => "-".to_owned(),
    }
}

/// A JSON value on one line, with the controls JSON leaves alone (DEL, C1) escaped too.
fn json(value: &Value) -> String {
    printable(&value.to_string())
}

/// A value a person pastes back into a shell: quoted unless it is plain.
fn shell_word(text: &str) -> String {
    let plain =
        !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_:/.@+=,".contains(c));
    if plain { text.to_owned() } else { format!("'{}'", printable(&text.replace('\'', r"'\''"))) }
}

/// A table, or what there would have been none of.
fn table_or(table: Table, nothing: &str) -> String {
    if table.is_empty() { nothing.to_owned() } else { table.render() }
}

/// `cairn components`.
pub fn components(answer: &Value, _: &HeaderMap) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("ACTIVE", Align::Right),
        ("VERSIONS", Align::Right),
        ("DIGEST", Align::Left),
        ("SIZE", Align::Right),
        ("DEPLOYED", Align::Left),
    ]);
    for component in answer.as_array().map_or(&[][..], Vec::as_slice) {
        let active = component["versions"]
            .as_array()
            .and_then(|versions| versions.iter().find(|v| v["active"] == true))
            .unwrap_or(&Value::Null);
        table.row(vec![
            cell(&component["name"]),
            cell(&component["kind"]),
            format!("v{}", cell(&component["active_version"])),
            list(component, "versions").len().to_string(),
            short_digest(&active["digest"]),
            byte_size(&active["size"]),
            cell(&active["deployed_at"]),
        ]);
    }
    table_or(table, "no components deployed")
}

/// `cairn views`.
pub fn views(answer: &Value, _: &HeaderMap) -> String {
    let mut table = Table::new(&[
        ("PROJECTION", Align::Left),
        ("VERSION", Align::Right),
        ("STATUS", Align::Left),
        ("CURSOR", Align::Right),
        ("LAG", Align::Right),
        ("DOCUMENTS", Align::Right),
        ("GENERATION", Align::Right),
        ("DETAIL", Align::Left),
    ]);
    for view in list(answer, "projections") {
        let rebuild = &view["rebuild"];
        let detail = if view["failure"].is_object() {
            failure(&view["failure"], "at")
        } else if rebuild["failure"].is_object() {
            failure(&rebuild["failure"], &format!("generation {} stopped at", cell(&rebuild["generation"])))
        } else if rebuild.is_object() {
            let progress = rebuild["progress"].as_f64().unwrap_or(0.0);
            format!("generation {} at {:.0}%", cell(&rebuild["generation"]), progress * 100.0)
        } else {
            cell(&view["last_error"])
        };
        table.row(vec![
            cell(&view["name"]),
            format!("v{}", cell(&view["version"])),
            status(view["status"].as_str().unwrap_or("-")),
            cell(&view["cursor"]),
            cell(&view["lag"]),
            cell(&view["documents"]),
            cell(&view["generation"]),
            detail,
        ]);
    }
    table_or(table, "no projections deployed")
}

/// Where a projection (or its rebuild) stopped and why, in red.
fn failure(failure: &Value, lead: &str) -> String {
    let (position, stream, event_type) =
        (cell(&failure["position"]), cell(&failure["stream"]), cell(&failure["event_type"]));
    style(format!("{lead} {position} ({stream} {event_type}): {}", cell(&failure["reason"])))
        .red()
        .to_string()
}

/// `cairn routing`.
pub fn routing(answer: &Value, _: &HeaderMap) -> String {
    let mut table = Table::new(&[
        ("SUBSCRIBER", Align::Left),
        ("CURSOR", Align::Right),
        ("LAG", Align::Right),
        ("IN FLIGHT", Align::Right),
        ("DELIVERED", Align::Right),
        ("HANDED BACK", Align::Right),
        ("DEAD LETTERS", Align::Right),
        ("RESTARTS", Align::Right),
        ("SOURCES", Align::Left),
        ("LAST ERROR", Align::Left),
    ]);
    for subscriber in list(answer, "subscribers") {
        let sources: Vec<String> = list(subscriber, "subscriptions")
            .iter()
            .map(|s| {
                let replies = if s["replies_only"] == true { " (replies)" } else { "" };
                format!("{}{replies}", cell(&s["source_type"]))
            })
            .collect();
        let letters = subscriber["dead_letters"].as_u64().unwrap_or(0);
        let letters = if letters > 0 { style(letters).red().to_string() } else { letters.to_string() };
        let error = match &subscriber["last_error"] {
            Value::Null => "-".to_owned(),
            error => style(cell(error)).red().to_string(),
        };
        table.row(vec![
            cell(&subscriber["name"]),
            cell(&subscriber["cursor"]),
            cell(&subscriber["lag"]),
            cell(&subscriber["in_flight"]),
            cell(&subscriber["delivered_commands"]),
            cell(&subscriber["handed_back"]),
            letters,
            cell(&subscriber["restarts"]),
            sources.join(", "),
            error,
        ]);
    }
    table_or(table, "no subscribers")
}

/// `cairn dead-letters`.
pub fn dead_letters(answer: &Value, _: &HeaderMap) -> String {
    let mut table = Table::new(&[
        ("SUBSCRIBER", Align::Left),
        ("STREAM", Align::Left),
        ("POSITION", Align::Right),
        ("EVENT", Align::Left),
        ("BEHIND", Align::Right),
        ("ATTEMPTS", Align::Right),
        ("PARKED AT", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for letter in list(answer, "dead_letters") {
        table.row(vec![
            cell(&letter["subscriber"]),
            cell(&letter["stream"]),
            cell(&letter["position"]),
            cell(&letter["event_type"]),
            cell(&letter["waiting_behind"]),
            cell(&letter["attempts"]),
            cell(&letter["parked_at"]),
            style(printable(first_line(letter["error"].as_str().unwrap_or("-")))).red().to_string(),
        ]);
    }
    let mut text = table_or(table, "no dead letters");
    if let Some(next) = answer["next_after"].as_str() {
        text.push_str(&format!("\nmore: --after {}", shell_word(next)));
    }
    text
}

/// `cairn cluster`.
pub fn cluster(answer: &Value, _: &HeaderMap) -> String {
    let node = &answer["node"];
    let unowned = list(answer, "unowned");
    let unowned = if unowned.is_empty() {
        "none unowned".to_owned()
    } else {
        style(format!("{} unowned", unowned.len())).red().to_string()
    };
    let mut text = format!(
        "this node: {} at {} · {} partitions, {unowned} · lease {} ms\n",
        cell(&node["id"]),
        cell(&node["url"]),
        cell(&answer["partitions"]),
        cell(&answer["lease_ttl_ms"]),
    );
    let mut table = Table::new(&[
        ("NODE", Align::Left),
        ("URL", Align::Left),
        ("ALIVE", Align::Left),
        ("REACHABLE", Align::Left),
        ("PARTITIONS", Align::Right),
        ("BACKGROUND", Align::Left),
        ("LAST RENEWAL", Align::Left),
    ]);
    for member in list(answer, "nodes") {
        table.row(vec![
            cell(&member["id"]),
            cell(&member["url"]),
            yes_no(&member["alive"]),
            yes_no(&member["reachable"]),
            cell(&member["partitions"]),
            if member["background"] == true { "routing, views".to_owned() } else { "-".to_owned() },
            cell(&member["last_renewal"]),
        ]);
    }
    text.push_str(&table.render());
    for version in list(node, "unloadable") {
        text.push_str(&format!(
            "\n{} {} v{}: {}",
            style("cannot load").red(),
            cell(&version["component"]),
            cell(&version["version"]),
            cell(&version["error"])
        ));
    }
    text
}

/// `cairn events`, `cairn log`, `cairn saga`: one event a row.
pub fn events(answer: &Value, _: &HeaderMap) -> String {
    let mut table = Table::new(&[
        ("POSITION", Align::Right),
        ("STREAM", Align::Left),
        ("VERSION", Align::Right),
        ("TYPE", Align::Left),
        ("CORRELATION", Align::Left),
        ("DATA", Align::Left),
    ]);
    for event in list(answer, "events") {
        table.row(vec![
            cell(&event["position"]),
            cell(&event["stream"]),
            cell(&event["version"]),
            cell(&event["type"]),
            cell(&event["correlation_id"]),
            json(&event["data"]),
        ]);
    }
    let mut text = table_or(table, "no events");
    // The global log and a saga page with `after`, one stream's events with `from`.
    if let Some(next) = answer["next_after"].as_u64() {
        text.push_str(&format!("\nmore: --after {next}"));
    } else if let Some(next) = answer["next_from"].as_u64() {
        text.push_str(&format!("\nmore: --from {next}"));
    }
    text
}

/// `cairn send`: the stream, its version now, and what it recorded.
pub fn command(answer: &Value, _: &HeaderMap) -> String {
    let recorded: Vec<String> = list(answer, "events")
        .iter()
        .map(|e| format!("{} {}", style(cell(&e["type"])).bold(), json(&e["data"])))
        .collect();
    let recorded = if recorded.is_empty() { "nothing new recorded".to_owned() } else { recorded.join(", ") };
    format!("{}/{} v{}: {recorded}", cell(&answer["type"]), cell(&answer["id"]), cell(&answer["version"]))
}

/// `cairn state`.
pub fn state(answer: &Value, _: &HeaderMap) -> String {
    format!(
        "{}/{} v{}: {}",
        cell(&answer["type"]),
        cell(&answer["id"]),
        cell(&answer["version"]),
        json(&answer["state"])
    )
}

/// `cairn view`: the document, and the position the view had applied.
pub fn document(answer: &Value, headers: &HeaderMap) -> String {
    let position = headers.get("x-cairn-position").and_then(|p| p.to_str().ok()).unwrap_or("?");
    format!("at position {}: {}", printable(position), json(answer))
}

/// `cairn rebuild`.
pub fn rebuild(answer: &Value, _: &HeaderMap) -> String {
    let rebuild = &answer["rebuild"];
    format!(
        "{}: {} generation {} with v{} (`cairn views` shows its progress)",
        cell(&rebuild["projection"]),
        cell(&answer["status"]),
        cell(&rebuild["generation"]),
        cell(&rebuild["version"])
    )
}

/// `cairn deploy`: what was (or, on a dry run, would be) activated, and what the checks found.
pub fn deployed(answer: &Value, _: &HeaderMap) -> String {
    let outcome = match (answer["dry_run"] == true, answer["active"] == true) {
        (true, _) => style("would deploy (dry run: nothing activated)").yellow().to_string(),
        (false, true) => style("deployed and active").green().to_string(),
        (false, false) => "stored, not active".to_owned(),
    };
    let mut text = format!(
        "{} v{} {outcome} ({}, sha256:{}); {}",
        cell(&answer["name"]),
        cell(&answer["version"]),
        cell(&answer["kind"]),
        short_digest(&answer["digest"]),
        replay(&answer["replay"]),
    );
    if let Some(consumers) = answer["consumers"].as_object() {
        let each: Vec<String> = list(&answer["consumers"], "consumers")
            .iter()
            .map(|c| {
                format!(
                    "{} {} read {} ({} changed)",
                    cell(&c["kind"]),
                    cell(&c["name"]),
                    cell(&c["events"]),
                    cell(&c["changed"])
                )
            })
            .collect();
        let types: Vec<String> = list(&answer["consumers"], "changed_types").iter().map(cell).collect();
        text.push_str(&format!(
            "; schema of {} changed, {} events sampled: {}",
            types.join(", "),
            consumers.get("sampled").map_or("-".to_owned(), cell),
            if each.is_empty() { "no consumers".to_owned() } else { each.join(", ") }
        ));
    }
    text
}

/// `cairn rollback`, `cairn activate`.
pub fn switched(answer: &Value, _: &HeaderMap) -> String {
    let checked = match &answer["replay"] {
        Value::Null => "no replay check".to_owned(),
        report => replay(report),
    };
    format!("{}: v{} {}; {checked}", cell(&answer["name"]), cell(&answer["active_version"]), status("active"))
}

fn replay(report: &Value) -> String {
    let changed = report["changed"].as_u64().unwrap_or(0);
    let example =
        report["example"]["stream"].as_str().map(|s| format!(", e.g. {}", printable(s))).unwrap_or_default();
    let changed = if changed > 0 {
        style(format!("{changed} changed{example}")).yellow().to_string()
    } else {
        "0 changed".to_owned()
    };
    format!("replay check: {} streams, {changed}", cell(&report["streams"]))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::{dead_letters, shell_word, views};
    use reqwest::header::HeaderMap;
    use serde_json::json;

    #[test]
    fn a_guest_error_cannot_drive_the_terminal() {
        console::set_colors_enabled(false);
        let letter = json!({"subscriber": "faulty", "stream": "account/p", "position": 3,
            "event_type": "AccountCredited", "waiting_behind": 0, "attempts": 5,
            "parked_at": "2026-12-03T10:00:00Z", "error": "react failed: \u{1b}[2J\u{7}gone\nsecond line"});
        let shown = dead_letters(&json!({"dead_letters": [letter], "next_after": null}), &HeaderMap::new());
        assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "{shown:?}");
        assert!(shown.ends_with(r"react failed: \u{1b}[2J\u{7}gone"), "one line, escaped: {shown}");
    }

    #[test]
    fn a_next_page_reads_back_into_a_shell() {
        assert_eq!(shell_word("faulty:account/p:9"), "faulty:account/p:9");
        assert_eq!(shell_word("faulty:a b?c'd:9"), r"'faulty:a b?c'\''d:9'");
    }

    #[test]
    fn a_stopped_projection_or_rebuild_says_where_and_why() {
        console::set_colors_enabled(false);
        let at = json!({"position": 9, "stream": "account/p", "event_type": "AccountCredited", "reason": "trapped"});
        let stopped = json!({"projections": [
            {"name": "a", "version": 1, "status": "failed", "failure": at},
            {"name": "b", "version": 1, "status": "running", "rebuild": {"generation": 2, "failure": at}},
        ]});
        let shown = views(&stopped, &HeaderMap::new());
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines[1].ends_with("at 9 (account/p AccountCredited): trapped"), "{shown}");
        assert!(
            lines[2].ends_with("generation 2 stopped at 9 (account/p AccountCredited): trapped"),
            "{shown}"
        );
    }
}
