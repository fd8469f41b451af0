//! `cairn-bench-report RESULTS_DIR PLOT.svg`: reads the `<system>-<scenario>-<connections>.json`
//! reports `benches/run` collected (each what `cairn --json bench` printed), prints the
//! markdown table for BENCHMARKS.md and draws throughput and p99 against connections.

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Load {
    requests: u64,
    errors: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Deserialize)]
struct Report {
    scenario: String,
    connections: u32,
    load: Load,
    healthz: Option<Load>,
    ratio_to_healthz: Option<f64>,
    average_commit_batch: Option<f64>,
    transfers_terminal_after_ms: Option<f64>,
}

struct Run {
    system: String,
    report: Report,
}

fn read(dir: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let Some((system, _)) = name.split_once('-') else { continue };
        let text = std::fs::read_to_string(&path)?;
        let report = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        runs.push(Run { system: system.to_owned(), report });
    }
    if runs.is_empty() {
        bail!("no reports in {}", dir.display());
    }
    runs.sort_by(|a, b| {
        (a.system.as_str(), a.report.scenario.as_str(), a.report.connections).cmp(&(
            b.system.as_str(),
            b.report.scenario.as_str(),
            b.report.connections,
        ))
    });
    Ok(runs)
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn table(runs: &[Run]) {
    println!(
        "| system | load | connections | commands/s | `/healthz`/s | ratio | p50 ms | p99 ms | errors | appends per commit |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for Run { system, report } in runs {
        let load = &report.load;
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {} of {} | {} |",
            label(system),
            report.scenario,
            report.connections,
            load.per_second,
            optional(report.healthz.as_ref().map(|h| h.per_second), 0),
            optional(report.ratio_to_healthz, 4),
            load.p50_ms,
            load.p99_ms,
            load.errors,
            load.requests,
            optional(report.average_commit_batch, 1),
        );
    }
    for Run { system, report } in runs {
        if let Some(ms) = report.transfers_terminal_after_ms {
            println!(
                "\n{}: {} transfers at {} connections, every one terminal {ms:.0} ms after the last was accepted.",
                label(system),
                report.load.requests,
                report.connections
            );
        }
    }
    let ratio = |system: &str, scenario: &str, connections: u32| {
        runs.iter()
            .find(|r| {
                r.system == system && r.report.scenario == scenario && r.report.connections == connections
            })
            .and_then(|r| r.report.ratio_to_healthz)
    };
    let per_second = |system: &str, scenario: &str, connections: u32| {
        runs.iter()
            .find(|r| {
                r.system == system && r.report.scenario == scenario && r.report.connections == connections
            })
            .map(|r| r.report.load.per_second)
    };
    for connections in [8, 64] {
        for scenario in ["credits", "hot"] {
            let (Some(pg), Some(redb), Some(peer)) = (
                per_second("cairnpg", scenario, connections),
                per_second("cairn", scenario, connections),
                per_second("peer", scenario, connections),
            ) else {
                continue;
            };
            println!(
                "\n{scenario} at {connections} connections, in commands/s: Cairn on PostgreSQL {pg:.0}, \
                 {:.2}× Cairn on redb ({redb:.0}) and {:.1}× the peer ({peer:.0}) on the same PostgreSQL.",
                pg / redb,
                pg / peer.max(1.0)
            );
        }
    }
    for system in ["cairn", "cairnpg", "cairnall"] {
        for scenario in ["credits", "hot"] {
            if let (Some(cairn), Some(peer)) = (ratio(system, scenario, 64), ratio("peer", scenario, 64))
                && peer > 0.0
            {
                println!(
                    "\n{scenario} at 64 connections, each as a share of its own `/healthz`: {} {cairn:.4}, the peer {peer:.4}: {:.1}× the peer.",
                    label(system),
                    cairn / peer
                );
            }
        }
    }
}

/// The systems `benches/run` measures, by the prefix of their result files.
fn label(system: &str) -> &str {
    match system {
        "cairn" => "Cairn, Account only",
        "cairnpg" => "Cairn on PostgreSQL, Account only",
        "cairnall" => "Cairn, every example",
        "peer" => "cqrs-es + PostgreSQL",
        other => other,
    }
}

const SERIES: [(&str, &str, RGBColor); 8] = [
    ("cairn", "credits", RGBColor(0x1f, 0x6f, 0xb4)),
    ("cairn", "hot", RGBColor(0x5a, 0xb4, 0xe6)),
    ("cairnpg", "credits", RGBColor(0x6a, 0x3d, 0x9a)),
    ("cairnpg", "hot", RGBColor(0xb2, 0x9b, 0xd6)),
    ("cairnall", "credits", RGBColor(0x2c, 0x8c, 0x3c)),
    ("cairnall", "hot", RGBColor(0x8c, 0xcf, 0x7e)),
    ("peer", "credits", RGBColor(0xd0, 0x5a, 0x1e)),
    ("peer", "hot", RGBColor(0xf0, 0xa0, 0x50)),
];

fn plot(runs: &[Run], file: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(file, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let max_connections = runs.iter().map(|r| r.report.connections).max().unwrap_or(256).max(2);
    let points = |system: &str, scenario: &str, value: &dyn Fn(&Report) -> f64| -> Vec<(u32, f64)> {
        runs.iter()
            .filter(|r| r.system == system && r.report.scenario == scenario)
            .map(|r| (r.report.connections, value(&r.report).max(0.01)))
            .collect()
    };
    type Measure<'a> = &'a dyn Fn(&Report) -> f64;
    let panels: [(_, &str, Measure); 2] = [
        (&left, "commands per second (log)", &|r: &Report| r.load.per_second),
        (&right, "p99 latency, ms (log)", &|r: &Report| r.load.p99_ms),
    ];
    for (area, title, value) in panels {
        let all: Vec<f64> =
            runs.iter().filter(|r| r.report.scenario != "transfers").map(|r| value(&r.report)).collect();
        let low = all.iter().cloned().fold(f64::MAX, f64::min).max(0.01) / 2.0;
        // Headroom above the data for the legend.
        let high = all.iter().cloned().fold(0.0, f64::max) * 12.0;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((1u32..max_connections).log_scale(), (low..high).log_scale())?;
        chart.configure_mesh().x_desc("connections").y_label_formatter(&|v| format!("{v:.0}")).draw()?;
        for (system, scenario, colour) in SERIES {
            let series = points(system, scenario, value);
            if series.is_empty() {
                continue;
            }
            let label = format!("{}: {scenario}", label(system));
            chart
                .draw_series(LineSeries::new(series.clone(), colour.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
            chart.draw_series(series.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, svg] = args.as_slice() else {
        bail!("usage: cairn-bench-report RESULTS_DIR PLOT.svg");
    };
    let runs = read(Path::new(dir))?;
    table(&runs);
    plot(&runs, Path::new(svg)).with_context(|| format!("drawing {svg}"))?;
    eprintln!("plot written to {svg}");
    Ok(())
}
