//! `ferrotune eval metrics | compare | sheet | summarize`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferrotune_eval::report::{comparison_table, Run};
use ferrotune_eval::sheet::{self, SheetOptions};
use ferrotune_eval::{summary, MetricsReport, Predictions};

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Score a generated_predictions.jsonl: LLaMA-Factory's BLEU-4 and ROUGE-1/2/L (the
    /// numbers its predict mode reports), sacrebleu's corpus BLEU and Google
    /// rouge-score's ROUGE F-measures, all x100.
    Metrics(MetricsArgs),
    /// Put several runs side by side in one table (one column per run).
    Compare(CompareArgs),
    /// Write a human-evaluation sheet (sheet.csv and a self-contained sheet.html form)
    /// for rating answers on relevance, accuracy, fluency, completeness and safety (1-5).
    Sheet(SheetArgs),
    /// Aggregate filled rating sheets: mean and standard deviation per model and
    /// dimension, and agreement between raters (Krippendorff's alpha, interval).
    Summarize(SummarizeArgs),
    /// Answer an evaluation dataset with a model (prompt = the conversation up to its last
    /// assistant turn, rendered with the training template), like LLaMA-Factory's predict
    /// mode: writes generated_predictions.jsonl and predict_results.json (BLEU-4,
    /// ROUGE-1/2/L, eval loss and perplexity on the same samples).
    Predict(super::predict::PredictArgs),
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// A predictions file: one JSON object per line with "prompt", "predict" and
    /// "label" (LLaMA-Factory's and ferrotune's generated_predictions.jsonl).
    #[arg(long, value_name = "FILE")]
    predictions: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to FILE (what `eval compare` reads).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Include every sample's LLaMA-Factory scores in the JSON ("per_sample").
    #[arg(long)]
    per_sample: bool,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Runs to compare: metrics JSON files from `eval metrics --out`, LLaMA-Factory
    /// predict_results.json / all_results.json files, or predictions .jsonl files
    /// (scored now).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Column names, one per file, comma-separated or repeated (default: the file stem,
    /// or the folder for generated_predictions.jsonl, metrics.json and
    /// predict_results.json).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    name: Vec<String>,
    /// Also write the table as Markdown to FILE, the best score of each row in bold.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SheetArgs {
    /// Predictions files, one per model (generated_predictions.jsonl), answering the
    /// same samples in the same order.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    predictions: Vec<PathBuf>,
    /// Model names, one per predictions file, comma-separated or repeated (default:
    /// the file stem, or the folder for generated_predictions.jsonl).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    name: Vec<String>,
    /// Folder to write sheet.csv and sheet.html into (and blind_key.json with --blind).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Shuffle the rows with this seed, so raters do not see one model's answer always
    /// first; the same seed gives the same sheet.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Hide model names behind letters (A, B, ...) in a seeded random order; the key
    /// goes to OUT/blind_key.json, for `eval summarize --key`, not for raters.
    #[arg(long)]
    blind: bool,
    /// Rate only N samples: chosen at random with --seed, else the first N.
    #[arg(long, value_name = "N")]
    max_samples: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// Filled sheets (CSV with the columns of sheet.csv), typically one per rater. The
    /// rater is the "rater" column, or the file name where it is empty.
    #[arg(required = true, value_name = "SHEET")]
    sheets: Vec<PathBuf>,
    /// The blind_key.json written with a --blind sheet, to report real model names.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Metrics(args) => metrics(args),
        EvalCommand::Compare(args) => compare(args),
        EvalCommand::Sheet(args) => make_sheet(args),
        EvalCommand::Summarize(args) => summarize(args),
        EvalCommand::Predict(args) => super::predict::run(args),
    }
}

fn metrics(a: MetricsArgs) -> Result<()> {
    let predictions = Predictions::read(&a.predictions)?;
    let report = MetricsReport::compute(&predictions, a.per_sample);
    let json = serde_json::to_string_pretty(&report)? + "\n";
    if let Some(out) = &a.out {
        ferrotune_eval::error::write(out, &json)?;
    }
    if a.json {
        print!("{json}");
    } else {
        print!("{}", report.table());
        if let Some(out) = &a.out {
            println!("\nwrote {}", out.display());
        }
    }
    Ok(())
}

/// Pairs each file with its --name, if any; the counts must agree.
fn named<'a>(files: &'a [PathBuf], names: &[String]) -> Result<Vec<(&'a Path, Option<String>)>> {
    if !names.is_empty() && names.len() != files.len() {
        bail!(
            "{} names for {} files: give one --name per file, in the same order",
            names.len(),
            files.len()
        );
    }
    Ok(files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_path(), names.get(i).cloned()))
        .collect())
}

fn compare(a: CompareArgs) -> Result<()> {
    let runs = named(&a.files, &a.name)?
        .into_iter()
        .map(|(path, name)| Run::load(path, name))
        .collect::<Result<Vec<_>, _>>()?;
    print!("{}", comparison_table(&runs, false));
    if let Some(path) = &a.markdown {
        ferrotune_eval::error::write(path, comparison_table(&runs, true))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn make_sheet(a: SheetArgs) -> Result<()> {
    let runs = named(&a.predictions, &a.name)?
        .into_iter()
        .map(|(path, name)| {
            let p = Predictions::read(path)?;
            Ok((name.unwrap_or_else(|| p.run_name()), p))
        })
        .collect::<Result<Vec<_>>>()?;
    let options = SheetOptions {
        seed: a.seed,
        blind: a.blind,
        max_samples: a.max_samples,
    };
    let sheet = sheet::build(&runs, &options)?;
    let written = sheet.write_to(&a.out)?;
    let models = runs.len();
    println!(
        "{} answers to rate ({} model{}), {} ratings each",
        sheet.rows.len(),
        models,
        if models == 1 { "" } else { "s" },
        sheet::DIMENSIONS.len()
    );
    for path in written {
        println!("wrote {}", path.display());
    }
    if a.blind {
        println!("keep blind_key.json away from raters; pass it to `eval summarize --key`");
    }
    Ok(())
}

fn summarize(a: SummarizeArgs) -> Result<()> {
    let key: HashMap<String, String> = match &a.key {
        None => HashMap::new(),
        Some(path) => {
            let text = ferrotune_eval::error::read_to_string(path)?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a blind key (a JSON object of shown name -> model name)",
                    path.display()
                )
            })?
        }
    };
    let paths: Vec<&Path> = a.sheets.iter().map(PathBuf::as_path).collect();
    let s = summary::summarize(&paths, &key)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.table());
    }
    Ok(())
}
