//! Automatic metrics of one run, as JSON and as a table, and several runs side by side.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bleu::{self, CorpusBleu};
use crate::error::{read_to_string, EvalError, Result};
use crate::llamafactory::{self, LfScores};
use crate::predictions::{run_name, Predictions};
use crate::rouge;

/// sacrebleu's corpus BLEU with its settings, as stored in a metrics file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SacreBleu {
    pub score: f64,
    pub precisions: [f64; 4],
    pub bp: f64,
    pub ratio: f64,
    pub hyp_len: usize,
    pub ref_len: usize,
    /// sacrebleu's signature settings and verbose line, for papers.
    pub signature: String,
}

impl From<CorpusBleu> for SacreBleu {
    fn from(b: CorpusBleu) -> Self {
        SacreBleu {
            signature: format!("{}  {}", bleu::SACREBLEU_SETTINGS, b.verbose()),
            score: b.score,
            precisions: b.precisions,
            bp: b.bp,
            ratio: b.ratio,
            hyp_len: b.hyp_len,
            ref_len: b.ref_len,
        }
    }
}

/// Mean rouge-score F-measures, x100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RougeScoreMeans {
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
}

/// Everything `ferrotune eval metrics` reports for one predictions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub predictions: String,
    pub samples: usize,
    /// LLaMA-Factory's predict scores: per sample x100, rounded to 4 decimals, averaged.
    pub llamafactory: LfScores,
    /// Corpus BLEU over all samples (13a tokens: meant for space-separated languages).
    pub sacrebleu: SacreBleu,
    /// Google rouge-score, averaged over samples (ASCII words only: 0 for Chinese).
    pub rouge_score: RougeScoreMeans,
    /// LLaMA-Factory scores of every sample, in file order, when asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_sample: Vec<LfScores>,
}

impl MetricsReport {
    pub fn compute(predictions: &Predictions, keep_per_sample: bool) -> Self {
        let samples = &predictions.samples;
        let lf: Vec<LfScores> = samples
            .iter()
            .map(|s| llamafactory::score(&s.predict, &s.label))
            .collect();
        let corpus = bleu::corpus_bleu(samples.iter().map(|s| (&*s.predict, &*s.label)));
        let rs: Vec<_> = samples
            .iter()
            .map(|s| rouge::rouge_score(&s.predict, &s.label))
            .collect();
        let n = rs.len().max(1) as f64;
        let mean = |f: fn(&rouge::RougeF) -> f64| rs.iter().map(f).sum::<f64>() / n * 100.0;
        MetricsReport {
            predictions: predictions.path.display().to_string(),
            samples: samples.len(),
            llamafactory: llamafactory::mean(&lf),
            sacrebleu: corpus.into(),
            rouge_score: RougeScoreMeans {
                rouge1: mean(|r| r.rouge1),
                rouge2: mean(|r| r.rouge2),
                rouge_l: mean(|r| r.rouge_l),
            },
            per_sample: if keep_per_sample { lf } else { Vec::new() },
        }
    }

    /// A table for the terminal.
    pub fn table(&self) -> String {
        let lf = &self.llamafactory;
        let b = &self.sacrebleu;
        let r = &self.rouge_score;
        let mut out = String::new();
        let _ = writeln!(out, "{} ({} samples)\n", self.predictions, self.samples);
        let _ = writeln!(out, "LLaMA-Factory style (per sample x100, averaged)");
        for (name, v) in [
            ("BLEU-4", lf.bleu4),
            ("ROUGE-1", lf.rouge1),
            ("ROUGE-2", lf.rouge2),
            ("ROUGE-L", lf.rouge_l),
        ] {
            let _ = writeln!(out, "  {name:<9} {v:>8.4}");
        }
        let _ = writeln!(out, "sacrebleu corpus BLEU ({})", bleu::SACREBLEU_SETTINGS);
        let _ = writeln!(
            out,
            "  {:<9} {:>8.4}   {}",
            "BLEU",
            b.score,
            verbose_tail(b)
        );
        let _ = writeln!(out, "rouge-score F x100 (mean, no stemmer)");
        for (name, v) in [
            ("rouge1", r.rouge1),
            ("rouge2", r.rouge2),
            ("rougeL", r.rouge_l),
        ] {
            let _ = writeln!(out, "  {name:<9} {v:>8.4}");
        }
        out
    }
}

fn verbose_tail(b: &SacreBleu) -> String {
    let p = &b.precisions;
    format!(
        "{:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
        p[0], p[1], p[2], p[3], b.bp, b.ratio, b.hyp_len, b.ref_len
    )
}

/// The rows of a comparison, in order.
const METRICS: [&str; 9] = [
    "samples",
    "BLEU-4 (LLaMA-Factory)",
    "ROUGE-1 (LLaMA-Factory)",
    "ROUGE-2 (LLaMA-Factory)",
    "ROUGE-L (LLaMA-Factory)",
    "BLEU (sacrebleu)",
    "rouge1 (rouge-score)",
    "rouge2 (rouge-score)",
    "rougeL (rouge-score)",
];

/// One column of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub name: String,
    /// One value per row of [`METRICS`]; `None` where the source has no such score.
    pub values: [Option<f64>; METRICS.len()],
}

impl Run {
    pub fn from_report(name: String, r: &MetricsReport) -> Self {
        let lf = &r.llamafactory;
        let rs = &r.rouge_score;
        Run {
            name,
            values: [
                Some(r.samples as f64),
                Some(lf.bleu4),
                Some(lf.rouge1),
                Some(lf.rouge2),
                Some(lf.rouge_l),
                Some(r.sacrebleu.score),
                Some(rs.rouge1),
                Some(rs.rouge2),
                Some(rs.rouge_l),
            ],
        }
    }

    /// A run from a predictions file (`.jsonl`, scored now), a metrics JSON written by
    /// `ferrotune eval metrics --out`, or LLaMA-Factory's `predict_results.json` /
    /// `all_results.json` (its `predict_*` scores; the other rows stay empty).
    pub fn load(path: &Path, name: Option<String>) -> Result<Self> {
        let name = name.unwrap_or_else(|| run_name(path));
        if path.extension().is_some_and(|e| e == "jsonl") {
            let report = MetricsReport::compute(&Predictions::read(path)?, false);
            return Ok(Run::from_report(name, &report));
        }
        let text = read_to_string(path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| EvalError::file(path, format!("not valid JSON: {e}")))?;
        if value.get("llamafactory").is_some() {
            let report: MetricsReport = serde_json::from_value(value)
                .map_err(|e| EvalError::file(path, format!("not a ferrotune metrics file: {e}")))?;
            return Ok(Run::from_report(name, &report));
        }
        let lf = |key: &str| value.get(format!("predict_{key}")).and_then(Value::as_f64);
        if lf("bleu-4").is_none() {
            return Err(EvalError::file(
                path,
                "neither a ferrotune metrics file (no \"llamafactory\" key) nor LLaMA-Factory \
                 predict results (no \"predict_bleu-4\" key)",
            ));
        }
        let mut values = [None; METRICS.len()];
        values[0] = value.get("predict_samples").and_then(Value::as_f64);
        for (i, key) in ["bleu-4", "rouge-1", "rouge-2", "rouge-l"]
            .iter()
            .enumerate()
        {
            values[i + 1] = lf(key);
        }
        Ok(Run { name, values })
    }
}

/// The comparison as aligned text columns, or as a Markdown table with the best value
/// of each score row in bold.
pub fn comparison_table(runs: &[Run], markdown: bool) -> String {
    let cell = |v: Option<f64>, row: usize| match v {
        None => "-".to_string(),
        Some(v) if row == 0 => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_string()];
    header.extend(runs.iter().map(|r| r.name.clone()));
    rows.push(header);
    for (i, metric) in METRICS.iter().enumerate() {
        let best = runs
            .iter()
            .filter_map(|r| r.values[i])
            .fold(f64::NEG_INFINITY, f64::max);
        let mut row = vec![metric.to_string()];
        for run in runs {
            let text = cell(run.values[i], i);
            let is_best = markdown && i > 0 && runs.len() > 1 && run.values[i] == Some(best);
            row.push(if is_best { format!("**{text}**") } else { text });
        }
        rows.push(row);
    }
    let mut out = String::new();
    if markdown {
        for (i, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
            if i == 0 {
                let rule = vec!["---"; row.len()];
                let _ = writeln!(out, "|{}|", rule.join("|"));
            }
        }
        return out;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (c, text) in row.iter().enumerate().skip(1) {
            let _ = write!(line, "  {:>w$}", text, w = widths[c]);
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}
