//! `ferrotune data preview`, `ferrotune data stats` (and the dispatch of `data check`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use ferrotune_data::config::{DataArgs, DATA_KEYS};
use ferrotune_data::encode::{Encoded, Overlong};
use ferrotune_data::pack::{self, Packing};
use ferrotune_data::pipeline::{self, DatasetReport, Prepared};
use ferrotune_data::stats::LengthStats;
use ferrotune_data::{placeholders, ChatTemplate, Formatting, Stage};
use ferrotune_train::config::file::ConfigFile;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Show samples as the model will train on them: the rendered text with the
    /// supervised part marked (in colour on a terminal, [[like this]] otherwise).
    Preview(PreviewArgs),
    /// Count records, samples and tokens per dataset: length percentiles, the supervised
    /// fraction, and how many samples were truncated, dropped or left without a
    /// supervised token.
    Stats(StatsArgs),
    /// Tokenize the config's datasets into the tokenized cache (what `train` reuses) and
    /// print where each entry is. A rerun with unchanged inputs reuses the entries; any
    /// change to the data files, tokenizer, template or options makes new ones.
    Prepare(PrepareArgs),
    /// Find what would make training worse: duplicates, empty or echoed answers,
    /// placeholders, template tokens, broken tool calls, outliers (`--fix` removes them).
    ///
    /// Per dataset and overall, with examples: exact and near duplicates (MinHash, CJK
    /// aware), one prompt with different answers, empty, short or echoed responses,
    /// unreplaced placeholders, template control tokens in the text, tool calls that are
    /// not JSON, length outliers, answers in another script than their prompt, words of a
    /// --blocklist; plus the script mix and instruction diversity. Runs without a
    /// tokenizer (lengths then count characters). `--fix OUT` writes a cleaned copy.
    Check(super::check::CheckArgs),
}

/// Which data to load: a config file, flags, or both (flags win).
#[derive(Debug, Args)]
pub(super) struct DataSelection {
    /// A YAML config (LLaMA-Factory key names: model_name_or_path, dataset, dataset_dir,
    /// template, cutoff_len, train_on_prompt, mask_history, max_samples, stage, ...).
    config: Option<PathBuf>,
    /// A dataset file, folder or glob, or a name in DATASET_DIR/dataset_info.json. May be
    /// repeated or comma-separated.
    #[arg(long, value_delimiter = ',')]
    dataset: Vec<String>,
    /// Folder holding dataset_info.json and the data files.
    #[arg(long)]
    dataset_dir: Option<PathBuf>,
    /// Record format of files given with --dataset (detected when unambiguous).
    #[arg(long, value_parser = ["alpaca", "sharegpt", "openai", "text"])]
    format: Option<String>,
    /// sft: conversations with the loss on replies; pt: plain text, every token trained;
    /// dpo: preference pairs (chosen, rejected); kto: answers with a boolean kto_tag.
    #[arg(long, value_parser = ["sft", "pt", "dpo", "kto"])]
    stage: Option<String>,
    /// Chat template: a built-in name (default, empty, alpaca, alpaca_zh, chatml, llama2,
    /// llama3, mistral, qwen, qwen3, qwen3_nothink) or one defined in the config; the
    /// tokenizer's own jinja template when not given.
    #[arg(long)]
    template: Option<String>,
    /// Tokenizer (or model) folder with tokenizer.json and tokenizer_config.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Longest sample in tokens.
    #[arg(long)]
    cutoff_len: Option<usize>,
    /// Drop samples longer than --cutoff-len instead of truncating them.
    #[arg(long)]
    drop_overlong: bool,
    /// Train on prompt tokens too.
    #[arg(long)]
    train_on_prompt: bool,
    /// Train only the last assistant turn of each conversation.
    #[arg(long)]
    mask_history: bool,
    /// Use at most N records of each dataset.
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,
    /// Replace {{NAME}} in the data with VALUE (repeatable), e.g. --placeholder name=Ferro.
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_placeholder)]
    placeholder: Vec<(String, String)>,
    /// Skip malformed records (counted and reported) instead of stopping at the first.
    #[arg(long)]
    skip_invalid: bool,
}

fn parse_placeholder(s: &str) -> Result<(String, String), String> {
    placeholders::parse_pair(s)
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    data: DataSelection,
    /// How many samples to show.
    #[arg(short = 'n', long, default_value_t = 3)]
    num: usize,
    /// Print JSON Lines {"input_ids", "labels", "text"} (labels -100 where not trained).
    #[arg(long)]
    json: bool,
    /// Colour the supervised tokens.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    data: DataSelection,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    data: DataSelection,
    /// The cache folder (default: data_cache_dir from the config, else
    /// $FERROTUNE_CACHE_DIR, else ~/.cache/ferrotune/data).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Preview(args) => preview(args),
        DataCommand::Stats(args) => stats(args),
        DataCommand::Prepare(args) => prepare(args),
        DataCommand::Check(args) => super::check::run(args),
    }
}

/// Merges the config file (if any) and the flags into [`DataArgs`].
pub(super) fn data_args(sel: &DataSelection) -> Result<DataArgs> {
    let mut args = match &sel.config {
        Some(path) => {
            let config = ConfigFile::load(path)?;
            let mut args: DataArgs = config.section(DATA_KEYS)?;
            args.resolve_paths(&config.dir());
            args
        }
        None => DataArgs::default(),
    };
    if !sel.dataset.is_empty() {
        args.dataset = sel.dataset.clone();
    }
    if let Some(dir) = &sel.dataset_dir {
        args.dataset_dir = dir.clone();
    } else if sel.config.is_none() {
        args.dataset_dir = PathBuf::from(".");
    }
    if let Some(format) = &sel.format {
        args.formatting = Some(format.parse::<Formatting>()?);
    }
    if let Some(stage) = &sel.stage {
        args.stage = stage.parse::<Stage>()?;
    }
    if sel.template.is_some() {
        args.template = sel.template.clone();
    }
    if let Some(dir) = &sel.tokenizer {
        args.tokenizer_name_or_path = Some(dir.clone());
    }
    if let Some(n) = sel.cutoff_len {
        args.cutoff_len = n;
    }
    if sel.drop_overlong {
        args.overlong = Overlong::Drop;
    }
    args.train_on_prompt |= sel.train_on_prompt;
    args.mask_history |= sel.mask_history;
    if sel.max_samples.is_some() {
        args.max_samples = sel.max_samples;
    }
    for (k, v) in &sel.placeholder {
        args.placeholders.insert(k.clone(), v.clone());
    }
    args.skip_invalid = sel.skip_invalid;
    if args.dataset.is_empty() {
        anyhow::bail!("no dataset: give --dataset FILE or a config file with `dataset:`");
    }
    Ok(args)
}

/// Warnings that apply to the whole run, on stderr.
fn print_warnings(prepared: &Prepared) {
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    for report in &prepared.reports {
        for (key, count) in &report.unreplaced {
            eprintln!(
                "warning: {}: placeholder {{{{{key}}}}} left unreplaced in {count} record(s); set `placeholders: {{{key}: ...}}` in the config or --placeholder {key}=VALUE",
                report.name
            );
        }
        if report.invalid > 0 {
            eprintln!(
                "warning: {}: skipped {} malformed record(s)",
                report.name, report.invalid
            );
        }
        let lost = report.all_masked + report.unrenderable + report.dropped_too_long;
        if lost > 0 {
            eprintln!(
                "warning: {}: {lost} record(s) gave no training example ({} without a supervised token, {} unrenderable, {} too long)",
                report.name, report.all_masked, report.unrenderable, report.dropped_too_long
            );
        }
        for example in &report.examples {
            eprintln!("  {example}");
        }
    }
}

fn preview(args: PreviewArgs) -> Result<()> {
    let data = data_args(&args.data)?;
    let prepared = pipeline::prepare(&data, Some(args.num))?;
    print_warnings(&prepared);
    let tokenizer = prepared.tokenizer.hf()?;
    let decode = |ids: &[u32]| {
        tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for sample in &prepared.samples {
            let e = &sample.encoded;
            let segments: Vec<Vec<serde_json::Value>> = segments(e, &decode)?
                .into_iter()
                .map(|sequence| {
                    sequence
                        .into_iter()
                        .map(|(supervised, text)| json!({"text": text, "supervised": supervised}))
                        .collect()
                })
                .collect();
            let mut line = json!({
                "input_ids": e.input_ids,
                "labels": e.labels,
                "text": decode(&e.input_ids)?,
                "at": sample.at.to_string(),
                "truncated": e.truncated,
                "segments": segments,
            });
            if let Some(w) = &e.weights {
                line["weights"] = json!(w);
            }
            if let Some(k) = e.second_start {
                line["second_start"] = json!(k);
            }
            if let Some(d) = e.desirable {
                line["kto_tag"] = json!(d);
            }
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    let colour = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let template = match &prepared.template {
        Some(t) => format!(
            "template {} (end of turn {:?}, stops on {:?})",
            template_label(t),
            t.markers.end_of_turn,
            t.stop_strings()
        ),
        None => "stage pt, no template".to_string(),
    };
    writeln!(out, "{template}")?;
    if !prepared.pad.note.is_empty() {
        writeln!(out, "note: {}", prepared.pad.note)?;
    }
    for (n, sample) in prepared.samples.iter().enumerate() {
        let e = &sample.encoded;
        writeln!(
            out,
            "\n── sample {} · {} · {} tokens, {} supervised{} ──",
            n + 1,
            sample.at,
            e.len(),
            e.supervised_tokens(),
            if e.truncated { ", truncated" } else { "" }
        )?;
        let sequences = segments(e, &decode)?;
        for (k, sequence) in sequences.iter().enumerate() {
            if sequences.len() == 2 {
                let which = match (e.desirable, k) {
                    (None, 0) => "chosen".to_string(),
                    (None, _) => "rejected".to_string(),
                    (Some(d), 0) => format!(
                        "kto example, {}",
                        if d { "desirable" } else { "undesirable" }
                    ),
                    (Some(_), _) => {
                        "KL sequence (its prompt, the previous record's answer)".to_string()
                    }
                };
                writeln!(out, "── {which} · {} tokens ──", e.sequences()[k].len())?;
            }
            for (supervised, text) in sequence {
                match (*supervised, colour) {
                    (true, true) => write!(out, "\x1b[1;32m{text}\x1b[0m")?,
                    (true, false) => write!(out, "[[{text}]]")?,
                    (false, true) => write!(out, "\x1b[2m{text}\x1b[0m")?,
                    (false, false) => write!(out, "{text}")?,
                }
            }
            writeln!(out)?;
        }
    }
    if prepared.samples.is_empty() {
        writeln!(out, "\nno samples")?;
    }
    Ok(())
}

/// Each sequence of an example (one, or a pair's two) as runs of text, supervised or not:
/// what `data preview` marks, on a terminal and in `--json` (`segments`) alike.
fn segments(
    e: &Encoded,
    decode: &impl Fn(&[u32]) -> Result<String>,
) -> Result<Vec<Vec<(bool, String)>>> {
    e.sequences()
        .iter()
        .map(|sequence| {
            e.runs()
                .into_iter()
                .map(|(supervised, range)| {
                    (
                        supervised,
                        range.start.max(sequence.start)..range.end.min(sequence.end),
                    )
                })
                .filter(|(_, range)| !range.is_empty())
                .map(|(supervised, range)| Ok((supervised, decode(&e.input_ids[range])?)))
                .collect()
        })
        .collect()
}

fn template_label(t: &ChatTemplate) -> String {
    match t.name() {
        "tokenizer" => "from the tokenizer".to_string(),
        name => name.to_string(),
    }
}

fn report_json(r: &DatasetReport) -> serde_json::Value {
    let tokens = r.tokens();
    json!({
        "name": r.name,
        "records": r.records,
        "samples": r.samples,
        "invalid": r.invalid,
        "truncated": r.truncated,
        "dropped_too_long": r.dropped_too_long,
        "all_masked": r.all_masked,
        "unrenderable": r.unrenderable,
        "tokens": tokens,
        "supervised_tokens": r.supervised_tokens,
        "supervised_fraction": if tokens == 0 { 0.0 } else { r.supervised_tokens as f64 / tokens as f64 },
        "length": LengthStats::of(&r.lengths),
        "unreplaced_placeholders": r.unreplaced,
        "problems": r.examples,
    })
}

fn total(reports: &[DatasetReport]) -> DatasetReport {
    let mut t = DatasetReport {
        name: "total".into(),
        ..DatasetReport::default()
    };
    for r in reports {
        t.records += r.records;
        t.samples += r.samples;
        t.invalid += r.invalid;
        t.truncated += r.truncated;
        t.dropped_too_long += r.dropped_too_long;
        t.all_masked += r.all_masked;
        t.unrenderable += r.unrenderable;
        t.lengths.extend_from_slice(&r.lengths);
        t.supervised_tokens += r.supervised_tokens;
        for (k, v) in &r.unreplaced {
            *t.unreplaced.entry(k.clone()).or_default() += v;
        }
    }
    t
}

fn stats(args: StatsArgs) -> Result<()> {
    let data = data_args(&args.data)?;
    let prepared = pipeline::prepare(&data, None)?;
    let total = total(&prepared.reports);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let doc = json!({
            "stage": data.stage.name(),
            "cutoff_len": data.cutoff_len,
            "template": prepared.template.as_ref().map(|t| json!({
                "name": t.name(),
                "end_of_turn": t.markers.end_of_turn,
                "stop_strings": t.stop_strings(),
            })),
            "pad_token": {"id": prepared.pad.id, "token": prepared.pad.token, "note": prepared.pad.note},
            "datasets": prepared.reports.iter().map(report_json).collect::<Vec<_>>(),
            "total": report_json(&total),
            "mixture": mixture_json(&prepared.reports),
            "packing": packing_json(&data, &prepared),
            "warnings": prepared.warnings,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    print_warnings(&prepared);
    if let Some(t) = &prepared.template {
        writeln!(
            out,
            "template {} · end of turn {:?} · cutoff_len {}",
            template_label(t),
            t.markers.end_of_turn,
            data.cutoff_len
        )?;
    }
    if !prepared.pad.note.is_empty() {
        writeln!(out, "note: {}", prepared.pad.note)?;
    }
    match data.stage {
        Stage::Dpo => writeln!(out, "stage dpo: a sample is a pair; its tokens and lengths count the chosen and the rejected sequence together")?,
        Stage::Kto => writeln!(out, "stage kto: a sample is an example with its KL sequence; its tokens and lengths count both")?,
        Stage::Sft | Stage::Pt => {}
    }
    let name_width = prepared
        .reports
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(5)
        .max(7);
    writeln!(
        out,
        "{:<name_width$} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>9} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "dataset", "records", "samples", "invalid", "truncated", "dropped", "masked", "unrender", "tokens", "p50", "p90", "p99", "max", "sup%"
    )?;
    for r in prepared.reports.iter().chain(std::iter::once(&total)) {
        let l = LengthStats::of(&r.lengths);
        let tokens = r.tokens();
        let sup = if tokens == 0 {
            0.0
        } else {
            100.0 * r.supervised_tokens as f64 / tokens as f64
        };
        writeln!(
            out,
            "{:<name_width$} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>9} {:>10} {:>6} {:>6} {:>6} {:>6} {:>5.1}%",
            r.name, r.records, r.samples, r.invalid, r.truncated, r.dropped_too_long, r.all_masked, r.unrenderable,
            tokens, l.p50, l.p90, l.p99, l.max, sup
        )?;
    }
    let mixture = mixture_json(&prepared.reports);
    writeln!(out, "\nmixture realised ({}):", data.mix_strategy.name())?;
    for m in mixture.as_array().into_iter().flatten() {
        writeln!(
            out,
            "  {:<name_width$} {:>8} samples ({:>5.1}%) {:>10} tokens ({:>5.1}%)",
            m["name"].as_str().unwrap_or(""),
            m["samples"],
            m["sample_share"].as_f64().unwrap_or(0.0) * 100.0,
            m["tokens"],
            m["token_share"].as_f64().unwrap_or(0.0) * 100.0
        )?;
    }
    let packing = packing_json(&data, &prepared);
    if packing["mode"] != "none" {
        writeln!(
            out,
            "packing ({}): {} rows of up to {} tokens, {:.1}% filled, {} samples longer than a row left out",
            packing["mode"].as_str().unwrap_or(""),
            packing["rows"],
            data.cutoff_len,
            packing["efficiency"].as_f64().unwrap_or(0.0) * 100.0,
            packing["dropped_too_long"]
        )?;
    }
    Ok(())
}

/// What the mixture took from each dataset: samples and tokens, with their shares.
fn mixture_json(reports: &[DatasetReport]) -> serde_json::Value {
    let samples: usize = reports.iter().map(|r| r.used).sum();
    let tokens: usize = reports.iter().map(|r| r.used_tokens).sum();
    reports
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "samples": r.used,
                "tokens": r.used_tokens,
                "sample_share": r.used as f64 / samples.max(1) as f64,
                "token_share": r.used_tokens as f64 / tokens.max(1) as f64,
            })
        })
        .collect()
}

/// The rows the trainer would build from the mixture with the config's packing.
fn packing_json(data: &DataArgs, prepared: &Prepared) -> serde_json::Value {
    let lengths = prepared.samples.lengths();
    let (mode, report) = match data.packing() {
        Packing::None => return json!({"mode": "none"}),
        Packing::Greedy => ("greedy", pack::greedy_report(&lengths, data.cutoff_len)),
        Packing::Neat => {
            let report = pack::pack_neat(&lengths, data.cutoff_len, pack::NEAT_WINDOW).1;
            ("neat", report)
        }
    };
    json!({
        "mode": mode,
        "rows": report.rows,
        "tokens": report.tokens,
        "efficiency": report.efficiency(),
        "dropped_too_long": report.dropped_too_long,
    })
}

fn prepare(args: PrepareArgs) -> Result<()> {
    let mut data = data_args(&args.data)?;
    if args.cache_dir.is_some() {
        data.data_cache_dir = args.cache_dir;
    }
    data.use_default_cache();
    if data.data_cache_dir.is_none() {
        anyhow::bail!("no cache folder: set data_cache_dir, --cache-dir or FERROTUNE_CACHE_DIR");
    }
    let started = std::time::Instant::now();
    let root = data.data_cache_dir.clone().expect("checked above");
    // The entries are filled (streamed, chunk by chunk) and their reports read; the
    // examples are not loaded.
    let loaded = Prepared::empty(&data)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let prepared = pipeline::prepare_cache(&data, &root, loaded)?;
    print_warnings(&prepared);
    let mut out = std::io::stdout().lock();
    for (c, r) in prepared.cache.iter().zip(&prepared.reports) {
        writeln!(
            out,
            "{} {}: {} samples, {} tokens -> {}",
            if c.hit { "reused" } else { "cached" },
            c.dataset,
            r.samples,
            r.tokens(),
            c.dir.display()
        )?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // The preprocessing alone is what LLaMA-Factory's `get_dataset` times (it loads the
    // tokenizer before).
    writeln!(
        out,
        "done in {seconds:.2} s (tokenizer and template loaded in {load_seconds:.2} s, then {:.2} s of preprocessing)",
        seconds - load_seconds
    )?;
    Ok(())
}
