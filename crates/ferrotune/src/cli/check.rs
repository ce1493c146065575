//! `ferrotune data check`: the dataset quality report, and `--fix` for a cleaned copy.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use ferrotune_data::quality::{
    self, fix, Check, CheckOptions, DatasetSummary, Finding, Report, Severity,
};

use super::data::{data_args, DataSelection};

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    data: DataSelection,
    /// Print one JSON object: `findings` (one {check, severity, dataset, records,
    /// example, detail} each) and `summary` (per dataset and overall).
    #[arg(long)]
    json: bool,
    /// Write a cleaned copy of every data file into the folder OUT, in its own format:
    /// records with an error finding dropped, duplicates dropped keeping the first;
    /// OUT/dropped.jsonl says which and why.
    #[arg(long, value_name = "OUT")]
    fix: Option<PathBuf>,
    /// Safety screen: words or phrases, one per line (`#` starts a comment), matched
    /// case-insensitively on word boundaries.
    #[arg(long, value_name = "FILE")]
    blocklist: Option<PathBuf>,
    /// Estimated Jaccard similarity (of 3-word shingles; 3-character for Chinese and
    /// Japanese) from which two samples are near-duplicates.
    #[arg(long, value_name = "0..1", default_value_t = 0.8)]
    near_threshold: f64,
    /// Final responses with fewer words (CJK: characters) are reported as short.
    #[arg(long, value_name = "N", default_value_t = 2)]
    min_response_words: usize,
    /// Examples shown per check in the summary.
    #[arg(long, value_name = "N", default_value_t = 2)]
    examples: usize,
    /// Print what every check looks for, its rule (with the thresholds these flags set),
    /// its severity and what --fix does with it, and exit (no dataset needed).
    #[arg(long)]
    explain: bool,
}

fn print_explanations(options: &CheckOptions) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ferrotune data check: {} checks. Errors are dropped by --fix; warnings are worth a look; info is for the record.\n",
        Check::ALL.len()
    )?;
    for e in quality::explain::explain(options) {
        writeln!(out, "{} ({})", e.check.name(), e.severity)?;
        writeln!(out, "  finds: {}", e.finds)?;
        writeln!(out, "  rule:  {}", e.rule)?;
        writeln!(out, "  fix:   {}\n", e.fix)?;
    }
    Ok(())
}

pub fn run(args: CheckArgs) -> Result<()> {
    if !(args.near_threshold > 0.0 && args.near_threshold <= 1.0) {
        bail!(
            "--near-threshold must be in (0, 1], not {}",
            args.near_threshold
        );
    }
    let mut options = CheckOptions {
        near_threshold: args.near_threshold,
        min_response_units: args.min_response_words,
        keep_raw: args.fix.is_some(),
        ..CheckOptions::default()
    };
    if args.explain {
        return print_explanations(&options);
    }
    let data = data_args(&args.data)?;
    if let Some(path) = &args.blocklist {
        options.blocklist = quality::read_blocklist(path)?;
    }
    let checked = quality::run(&data, &options)?;
    for note in &checked.notes {
        eprintln!("note: {note}");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&checked.report)?)?;
    } else {
        print_report(&mut out, &checked.report, args.examples)?;
    }
    if let Some(dir) = &args.fix {
        let summary = fix::write_fixed(&checked.datasets, &checked.report, dir)?;
        let mut lines = Vec::new();
        for f in &summary.files {
            lines.push(format!(
                "wrote {}: {} of {} records kept ({})",
                f.path.display(),
                f.kept,
                f.total,
                f.dataset
            ));
        }
        lines.push(format!(
            "dropped {} record(s); why: {}",
            summary.dropped,
            summary.log.display()
        ));
        for line in lines {
            if args.json {
                eprintln!("{line}");
            } else {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

fn print_report(out: &mut impl Write, report: &Report, examples: usize) -> Result<()> {
    let s = &report.summary;
    let mut by_dataset: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
    for f in &report.findings {
        by_dataset.entry(f.dataset.as_str()).or_default().push(f);
    }
    for d in &s.datasets {
        let findings = by_dataset.remove(d.name.as_str()).unwrap_or_default();
        print_dataset(out, d, s.length_unit, &findings, examples)?;
    }
    if s.datasets.len() > 1 {
        print_dataset(out, &s.overall, s.length_unit, &[], 0)?;
    }
    Ok(())
}

fn print_dataset(
    out: &mut impl Write,
    d: &DatasetSummary,
    unit: &str,
    findings: &[&Finding],
    examples: usize,
) -> Result<()> {
    writeln!(
        out,
        "\n── {} · {} records · {} clean (no error or warning) ──",
        d.name, d.records, d.clean
    )?;
    let mut rows: Vec<(Severity, Check, Vec<&Finding>)> = Vec::new();
    for f in findings {
        match rows
            .iter_mut()
            .find(|(sev, check, _)| *sev == f.severity && *check == f.check)
        {
            Some(row) => row.2.push(f),
            None => rows.push((f.severity, f.check, vec![f])),
        }
    }
    rows.sort_by_key(|(sev, check, _)| (*sev, *check));
    if d.checks.is_empty() {
        writeln!(out, "  no findings")?;
    }
    if rows.is_empty() {
        // The overall block: counts only.
        for (name, c) in &d.checks {
            writeln!(out, "  {name:<20} {}", count_label(c.findings, c.records))?;
        }
    }
    for (severity, check, list) in &rows {
        let records: usize = list.iter().map(|f| f.records.len()).sum();
        writeln!(
            out,
            "  {:<8} {:<20} {}",
            severity_name(*severity),
            check.name(),
            count_label(list.len(), records)
        )?;
        for f in list.iter().take(examples) {
            writeln!(
                out,
                "           {}: {} — {}",
                records_label(&f.records),
                f.example,
                f.detail
            )?;
        }
    }
    let scripts: Vec<String> = d.scripts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    writeln!(out, "  scripts: {}", scripts.join(", "))?;
    let l = &d.lengths;
    writeln!(
        out,
        "  length ({unit}): p50 {} · p90 {} · p99 {} · max {} · mean {}",
        l.p50, l.p90, l.p99, l.max, l.mean
    )?;
    let div = &d.diversity;
    let first: Vec<String> = div
        .first_words
        .iter()
        .map(|(w, n)| format!("{w} {n}"))
        .collect();
    writeln!(
        out,
        "  diversity of {} instructions: distinct-1 {} · distinct-2 {} · first words: {}",
        div.instructions,
        div.distinct_1,
        div.distinct_2,
        first.join(", ")
    )?;
    if !div.top_trigrams.is_empty() {
        let grams: Vec<String> = div
            .top_trigrams
            .iter()
            .take(6)
            .map(|(g, n)| format!("\"{g}\" {n}"))
            .collect();
        writeln!(out, "  frequent 3-grams: {}", grams.join(", "))?;
    }
    Ok(())
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

fn count_label(findings: usize, records: usize) -> String {
    if findings == records {
        format!("{records} record(s)")
    } else {
        format!("{findings} group(s), {records} records")
    }
}

fn records_label(records: &[usize]) -> String {
    let shown: Vec<String> = records.iter().take(4).map(usize::to_string).collect();
    let more = if records.len() > 4 {
        format!(" (+{})", records.len() - 4)
    } else {
        String::new()
    };
    match records.len() {
        1 => format!("record {}", shown[0]),
        _ => format!("records {}{more}", shown.join(", ")),
    }
}
