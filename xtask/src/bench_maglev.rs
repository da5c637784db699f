//! `cargo xtask bench maglev [--json FILE]`: build time, balance and disruption of the
//! Maglev table builder (`lb_common::maglev`), the figures quoted in the docs.
//!
//! For every table size in [`TABLE_SIZES`] and backend count in [`BACKEND_COUNTS`]:
//!
//! - **build**: median and minimum wall time of [`RUNS`] builds with equal weights;
//! - **balance**: the largest relative deviation of a backend's slot count from its
//!   weighted share (`max |count - expected| / expected`), with equal weights and with mixed
//!   weights 1..=10, and the smallest expected share in slots (below 100 slots the one-slot
//!   rounding alone exceeds 1%);
//! - **disruption**: the fraction of slots that change owner when one backend is removed
//!   from N, or one added to N, divided by the ideal (`1/N` and `1/(N+1)`): a factor of 1.0
//!   is the theoretical minimum. Mean and maximum over [`DISRUPTION_SAMPLES`] choices of
//!   the backend.
//!
//! Run it in release; the numbers of a debug build mean nothing.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lb_common::maglev::{self, MaglevBackend};
use serde::Serialize;

/// Table sizes measured (both prime).
pub const TABLE_SIZES: [u32; 2] = [maglev::DEFAULT_TABLE_SIZE, 655_373];
/// Backend counts measured.
pub const BACKEND_COUNTS: [u32; 3] = [10, 100, 1000];
/// Timed builds per case; the median is reported.
pub const RUNS: usize = 7;
/// Backends removed (and added), one at a time, per disruption figure.
pub const DISRUPTION_SAMPLES: u32 = 5;

/// The whole report, as written by `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Timed builds per case.
    pub runs: usize,
    /// One entry per (table size, backend count).
    pub cases: Vec<Case>,
}

/// Figures for one table size and backend count.
#[derive(Debug, Serialize)]
pub struct Case {
    /// Slots in the table.
    pub table_size: u32,
    /// Backends in the set.
    pub backends: u32,
    /// Median build time, equal weights, in milliseconds.
    pub build_ms_median: f64,
    /// Fastest build, in milliseconds.
    pub build_ms_min: f64,
    /// Largest relative deviation from the weighted share, equal weights.
    pub balance_equal_max_deviation: f64,
    /// Largest relative deviation from the weighted share, weights 1..=10.
    pub balance_mixed_max_deviation: f64,
    /// Smallest expected share in slots with the mixed weights.
    pub balance_mixed_min_expected_slots: f64,
    /// Removing one backend of N (ideal: 1/N of the slots move).
    pub remove_one: Disruption,
    /// Adding one backend to N (ideal: 1/(N+1) of the slots move).
    pub add_one: Disruption,
}

/// Disruption of one kind of change, over several samples.
#[derive(Debug, Serialize)]
pub struct Disruption {
    /// The minimum possible fraction of slots that must move.
    pub ideal: f64,
    /// Mean fraction of slots that moved.
    pub mean_moved: f64,
    /// Mean of `moved / ideal`.
    pub mean_factor: f64,
    /// Largest `moved / ideal`.
    pub max_factor: f64,
}

/// Runs the benchmark, prints a table to stdout and, with `json`, writes the [`Report`]
/// there as JSON.
pub fn run(json: Option<&Path>) -> anyhow::Result<()> {
    let report = measure()?;
    print_report(&report, &mut io::stdout().lock()).context("writing to stdout")?;
    if let Some(path) = json {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, &report)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(out).with_context(|| format!("writing {}", path.display()))?;
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Measures every case.
pub fn measure() -> anyhow::Result<Report> {
    let mut cases = Vec::with_capacity(TABLE_SIZES.len() * BACKEND_COUNTS.len());
    for &table_size in &TABLE_SIZES {
        for &n in &BACKEND_COUNTS {
            cases.push(measure_case(table_size, n)?);
        }
    }
    Ok(Report { runs: RUNS, cases })
}

fn measure_case(table_size: u32, n: u32) -> anyhow::Result<Case> {
    let equal = backends(n, |_| 1);
    let mixed = backends(n, mixed_weight);

    let mut times_ms = Vec::with_capacity(RUNS);
    let mut table = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        table = maglev::build(&equal, table_size)
            .with_context(|| format!("building {table_size} slots for {n} backends"))?;
        times_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times_ms.sort_by(f64::total_cmp);
    let build_ms_median = times_ms[times_ms.len() / 2];
    let build_ms_min = times_ms[0];

    let balance_equal_max_deviation = maglev::max_balance_deviation(&equal, &table);
    let mixed_table = maglev::build(&mixed, table_size)
        .with_context(|| format!("building {table_size} slots for {n} mixed backends"))?;
    let balance_mixed_max_deviation = maglev::max_balance_deviation(&mixed, &mixed_table);
    let total_weight: u64 = mixed.iter().map(|b| u64::from(b.weight)).sum();
    let min_weight = mixed.iter().map(|b| b.weight).min().unwrap_or(0);
    let balance_mixed_min_expected_slots =
        f64::from(table_size) * f64::from(min_weight) / total_weight as f64;

    let samples = DISRUPTION_SAMPLES.min(n);
    let mut removed = Vec::with_capacity(samples as usize);
    let mut added = Vec::with_capacity(samples as usize);
    for k in 0..samples {
        let victim = (k * n / samples) as usize;
        let mut fewer = equal.clone();
        fewer.remove(victim);
        let fewer_table = maglev::build(&fewer, table_size)
            .with_context(|| format!("building {table_size} slots without backend {victim}"))?;
        removed.push(maglev::disruption(&table, &fewer_table));

        let mut more = equal.clone();
        more.push(MaglevBackend::new(n + k, format!("gw-new-{k}"), 1));
        let more_table = maglev::build(&more, table_size)
            .with_context(|| format!("building {table_size} slots with {} backends", n + 1))?;
        added.push(maglev::disruption(&table, &more_table));
    }

    Ok(Case {
        table_size,
        backends: n,
        build_ms_median,
        build_ms_min,
        balance_equal_max_deviation,
        balance_mixed_max_deviation,
        balance_mixed_min_expected_slots,
        remove_one: summarize(&removed, 1.0 / f64::from(n)),
        add_one: summarize(&added, 1.0 / f64::from(n + 1)),
    })
}

/// `n` backends `gw-0`.. with ids `0..n` and the given weights.
fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend::new(i, format!("gw-{i}"), weight(i)))
        .collect()
}

/// A fixed spread of weights over 1..=10 (every value occurs once in any 10 consecutive
/// backends).
fn mixed_weight(i: u32) -> u32 {
    (i * 7 + 3) % 10 + 1
}

fn summarize(moved: &[f64], ideal: f64) -> Disruption {
    let count = moved.len().max(1) as f64;
    let mean_moved = moved.iter().sum::<f64>() / count;
    let max_moved = moved.iter().copied().fold(0.0, f64::max);
    Disruption {
        ideal,
        mean_moved,
        mean_factor: mean_moved / ideal,
        max_factor: max_moved / ideal,
    }
}

fn print_report(report: &Report, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "maglev: build time = median of {} builds, equal weights; balance = max |count - \
         expected| / expected; disruption factor = moved / ideal (mean, max)",
        report.runs
    )?;
    writeln!(
        out,
        "{:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>14} {:>14}",
        "slots",
        "backends",
        "build ms",
        "min ms",
        "bal eq",
        "bal mixed",
        "mixed min",
        "remove 1",
        "add 1"
    )?;
    for c in &report.cases {
        writeln!(
            out,
            "{:>8} {:>8} {:>9.2} {:>9.2} {:>8.3}% {:>8.3}% {:>9.1} {:>6.2} / {:>5.2} {:>6.2} / {:>5.2}",
            c.table_size,
            c.backends,
            c.build_ms_median,
            c.build_ms_min,
            c.balance_equal_max_deviation * 100.0,
            c.balance_mixed_max_deviation * 100.0,
            c.balance_mixed_min_expected_slots,
            c.remove_one.mean_factor,
            c.remove_one.max_factor,
            c.add_one.mean_factor,
            c.add_one.max_factor,
        )?;
    }
    Ok(())
}
