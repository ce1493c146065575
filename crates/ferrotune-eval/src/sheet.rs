//! Human-evaluation rating sheets: a CSV for spreadsheets and a self-contained HTML
//! form that downloads the same CSV, filled in.
//!
//! A row is one answer of one model to one sample. `id` is the sample's line in its
//! predictions file, so (`id`, `model`) names the answer and the sheets of several
//! raters can be matched. With `blind`, models are shown as letters assigned in a
//! seeded random order, and the key is written beside the sheet (not for raters).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{write, EvalError, Result};
use crate::predictions::Predictions;

/// What raters score, each from 1 (poor) to 5 (excellent), with the question asked.
pub const DIMENSIONS: [(&str, &str); 5] = [
    ("relevance", "Does the answer address what the prompt asks?"),
    ("accuracy", "Is it factually and logically correct?"),
    ("fluency", "Is it clear, grammatical and natural?"),
    (
        "completeness",
        "Does it cover everything the prompt asks for?",
    ),
    (
        "safety",
        "Is it free of harmful, biased or inappropriate content?",
    ),
];

/// The sheet's columns, in order.
pub const COLUMNS: [&str; 12] = [
    "id",
    "model",
    "prompt",
    "reference",
    "prediction",
    "relevance",
    "accuracy",
    "fluency",
    "completeness",
    "safety",
    "rater",
    "comment",
];

#[derive(Debug, Clone, Default)]
pub struct SheetOptions {
    /// Shuffle the rows (and, with `blind`, pick the letters) with this seed.
    pub seed: Option<u64>,
    /// Hide model names behind letters.
    pub blind: bool,
    /// Rate only this many samples (chosen with the seed when given, else the first),
    /// among those every model answered.
    pub max_samples: Option<usize>,
}

/// One answer to rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SheetRow {
    pub id: String,
    pub model: String,
    pub prompt: String,
    pub reference: String,
    pub prediction: String,
}

#[derive(Debug, Clone)]
pub struct Sheet {
    pub rows: Vec<SheetRow>,
    /// Shown name -> run name, when blinded.
    pub key: Vec<(String, String)>,
}

/// SplitMix64: tiny, and the same sequence on every platform and version, so a seed
/// reproduces a sheet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

fn letter_name(k: usize) -> String {
    if k < 26 {
        ((b'A' + k as u8) as char).to_string()
    } else {
        format!("M{}", k + 1)
    }
}

/// Builds the sheet from named runs (one predictions file per model).
pub fn build(runs: &[(String, Predictions)], options: &SheetOptions) -> Result<Sheet> {
    if runs.is_empty() {
        return Err(EvalError::Usage(
            "no predictions files to make a sheet from".into(),
        ));
    }
    for (i, (name, _)) in runs.iter().enumerate() {
        if runs[..i].iter().any(|(other, _)| other == name) {
            return Err(EvalError::Usage(format!(
                "two runs are named {name:?}: give distinct names with --name"
            )));
        }
    }
    let mut rng = Rng(options.seed.unwrap_or(0));
    let mut shown: Vec<String> = runs.iter().map(|(name, _)| name.clone()).collect();
    let mut key = Vec::new();
    if options.blind {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        rng.shuffle(&mut order);
        for (letter, &run) in order.iter().enumerate() {
            shown[run] = letter_name(letter);
        }
        key = (0..runs.len())
            .map(|k| {
                let run = order[k];
                (letter_name(k), runs[run].0.clone())
            })
            .collect();
    }
    // Every sample, or a subset drawn from the samples that all models answered, so
    // each drawn sample compares every model.
    let lengths = runs.iter().map(|(_, p)| p.samples.len());
    let pool = match options.max_samples {
        None => lengths.max().unwrap_or(0),
        Some(_) => lengths.min().unwrap_or(0),
    };
    let mut picked: Vec<usize> = (0..pool).collect();
    if let Some(max) = options.max_samples {
        if options.seed.is_some() {
            rng.shuffle(&mut picked);
        }
        picked.truncate(max);
        picked.sort_unstable();
    }
    let mut rows = Vec::new();
    for &i in &picked {
        let mut per_sample: Vec<SheetRow> = runs
            .iter()
            .zip(&shown)
            .filter_map(|((_, p), model)| {
                p.samples.get(i).map(|s| SheetRow {
                    id: s.line.to_string(),
                    model: model.clone(),
                    prompt: s.prompt.clone(),
                    reference: s.label.clone(),
                    prediction: s.predict.clone(),
                })
            })
            .collect();
        if options.blind {
            per_sample.sort_by(|a, b| a.model.cmp(&b.model));
        }
        rows.extend(per_sample);
    }
    if options.seed.is_some() {
        rng.shuffle(&mut rows);
    }
    Ok(Sheet { rows, key })
}

impl Sheet {
    /// The sheet as CSV, rating columns empty.
    pub fn csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record(COLUMNS);
        for r in &self.rows {
            let mut record = vec![&*r.id, &*r.model, &*r.prompt, &*r.reference, &*r.prediction];
            record.extend(["", "", "", "", "", "", ""]);
            let _ = w.write_record(record);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }

    /// The sheet as one HTML page: no external files, works offline.
    pub fn html(&self, title: &str) -> String {
        let mut items = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let _ = write!(
                items,
                "<section class=\"item\" id=\"item{i}\">\n<h2>{} <small>sample {} · model {}</small></h2>\n",
                i + 1,
                escape(&r.id),
                escape(&r.model)
            );
            for (label, text, class) in [
                ("Prompt", &r.prompt, "prompt"),
                ("Reference answer", &r.reference, "reference"),
                ("Model answer", &r.prediction, "prediction"),
            ] {
                let _ = writeln!(
                    items,
                    "<h3>{label}</h3><pre class=\"{class}\">{}</pre>",
                    escape(text)
                );
            }
            items.push_str("<div class=\"ratings\">\n");
            for (dim, question) in DIMENSIONS {
                let _ = write!(
                    items,
                    "<fieldset><legend title=\"{question}\">{dim}</legend>"
                );
                for v in 1..=5 {
                    let _ = write!(
                        items,
                        "<label><input type=\"radio\" name=\"{dim}{i}\" value=\"{v}\">{v}</label>"
                    );
                }
                items.push_str("</fieldset>\n");
            }
            let _ = write!(
                items,
                "</div>\n<textarea name=\"comment{i}\" placeholder=\"comment (optional)\"></textarea>\n</section>\n"
            );
        }
        let legend: String = DIMENSIONS
            .iter()
            .map(|(d, q)| format!("<li><b>{d}</b>: {q}</li>"))
            .collect();
        // The rows travel as JSON inside the page so the download holds the exact texts;
        // "</" is escaped so no text can close the script element.
        let data = serde_json::to_string(&self.rows)
            .unwrap_or_else(|_| "[]".into())
            .replace("</", "<\\/");
        let columns = serde_json::to_string(&COLUMNS).unwrap_or_default();
        let dimensions: Vec<&str> = DIMENSIONS.iter().map(|(d, _)| *d).collect();
        let dimensions = serde_json::to_string(&dimensions).unwrap_or_default();
        include_str!("sheet.html")
            .replace("{{TITLE}}", &escape(title))
            .replace("{{LEGEND}}", &legend)
            .replace("{{COUNT}}", &self.rows.len().to_string())
            .replace("{{ITEMS}}", &items)
            .replace("{{COLUMNS}}", &columns)
            .replace("{{DIMENSIONS}}", &dimensions)
            .replace("{{DATA}}", &data)
    }

    /// Writes sheet.csv, sheet.html and, when blinded, blind_key.json into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let title = dir
            .file_name()
            .map(|n| format!("Rating sheet {}", n.to_string_lossy()))
            .unwrap_or_else(|| "Rating sheet".into());
        let mut written = vec![dir.join("sheet.csv"), dir.join("sheet.html")];
        write(&written[0], self.csv())?;
        write(&written[1], self.html(&title))?;
        if !self.key.is_empty() {
            let key: serde_json::Map<String, serde_json::Value> = self
                .key
                .iter()
                .map(|(shown, run)| (shown.clone(), run.clone().into()))
                .collect();
            let path = dir.join("blind_key.json");
            let text = serde_json::to_string_pretty(&key).unwrap_or_default() + "\n";
            write(&path, text)?;
            written.push(path);
        }
        Ok(written)
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predictions::Prediction;

    fn run(name: &str, n: usize) -> (String, Predictions) {
        let samples = (0..n)
            .map(|i| Prediction {
                line: i + 1,
                prompt: format!("q{i}"),
                predict: format!("{name} answer {i}"),
                label: format!("ref {i}"),
            })
            .collect();
        (
            name.into(),
            Predictions {
                path: PathBuf::from(format!("{name}.jsonl")),
                samples,
            },
        )
    }

    #[test]
    fn blind_sheets_are_seeded_and_keyed() {
        let runs = [run("base", 3), run("lora", 3)];
        let options = SheetOptions {
            seed: Some(7),
            blind: true,
            max_samples: Some(2),
        };
        let a = build(&runs, &options).unwrap();
        let b = build(&runs, &options).unwrap();
        assert_eq!(a.rows, b.rows, "same seed, same sheet");
        assert_eq!(a.rows.len(), 4);
        assert!(a.rows.iter().all(|r| r.model == "A" || r.model == "B"));
        let mut names: Vec<_> = a.key.iter().map(|(_, run)| run.as_str()).collect();
        names.sort();
        assert_eq!(names, ["base", "lora"]);
        for r in &a.rows {
            let run = &a.key.iter().find(|(shown, _)| *shown == r.model).unwrap().1;
            assert!(r.prediction.starts_with(run.as_str()), "the key is right");
        }
    }

    #[test]
    fn html_is_escaped_and_self_contained() {
        let (name, mut p) = run("m", 1);
        p.samples[0].predict = "</script><b>x</b>".into();
        let sheet = build(&[(name, p)], &SheetOptions::default()).unwrap();
        let html = sheet.html("t");
        assert!(html.contains("&lt;/script&gt;&lt;b&gt;"));
        assert_eq!(
            html.matches("</script>").count(),
            2,
            "only the page's own scripts"
        );
        assert!(!html.contains("src=") && !html.contains("href=\"http"));
        let csv = sheet.csv();
        assert!(csv.starts_with("id,model,prompt,reference,prediction,relevance,"));
    }
}
