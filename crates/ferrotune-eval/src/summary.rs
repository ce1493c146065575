//! Filled rating sheets to numbers: mean and spread per model and dimension, and how
//! well the raters agree.
//!
//! Every rating counts once: a model's mean is over all its ratings, from all raters.
//! A sheet's rater is its `rater` column, or the file's name where that is empty, so
//! each rater can simply return their own file. Rows are numbered as a spreadsheet
//! shows them (the header is row 1).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::agreement::{krippendorff_interval, Alpha};
use crate::error::{read_to_string, EvalError, Result};
use crate::sheet::DIMENSIONS;

/// One rating from one row of a sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    pub rater: String,
    pub id: String,
    pub model: String,
    /// Index into [`DIMENSIONS`].
    pub dimension: usize,
    pub value: u8,
}

/// Reads the ratings of one filled sheet. Empty rating cells are unrated and skipped.
pub fn read_sheet(path: &Path) -> Result<Vec<Rating>> {
    let text = read_to_string(path)?;
    // Spreadsheets saving "CSV UTF-8" put a byte-order mark first.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| EvalError::file(path, format!("cannot read the header row: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let required = |name: &str| {
        column(name).ok_or_else(|| {
            EvalError::file(
                path,
                format!("no \"{name}\" column (a sheet has id, model, the five dimensions, rater)"),
            )
        })
    };
    let id_col = required("id")?;
    let model_col = required("model")?;
    let dim_cols = DIMENSIONS
        .iter()
        .map(|(d, _)| required(d))
        .collect::<Result<Vec<_>>>()?;
    let rater_col = column("rater");
    let default_rater = path.file_stem().unwrap_or_default().to_string_lossy();

    let mut ratings = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let at = format!("row {}", i + 2);
        let record = record.map_err(|e| EvalError::record(path, &at, e.to_string()))?;
        let cell = |c: usize| record.get(c).unwrap_or("").trim();
        let rater = rater_col.map(cell).filter(|r| !r.is_empty());
        let rater = rater.unwrap_or(&default_rater).to_string();
        for (dimension, &c) in dim_cols.iter().enumerate() {
            let text = cell(c);
            if text.is_empty() {
                continue;
            }
            let name = DIMENSIONS[dimension].0;
            let value = parse_rating(text)
                .map_err(|problem| EvalError::record(path, &at, format!("{name}: {problem}")))?;
            if cell(id_col).is_empty() || cell(model_col).is_empty() {
                return Err(EvalError::record(
                    path,
                    &at,
                    "rated, but \"id\" or \"model\" is empty",
                ));
            }
            ratings.push(Rating {
                rater: rater.clone(),
                id: cell(id_col).to_string(),
                model: cell(model_col).to_string(),
                dimension,
                value,
            });
        }
    }
    Ok(ratings)
}

fn parse_rating(text: &str) -> std::result::Result<u8, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number (ratings are whole numbers 1 to 5)"))?;
    if !(1.0..=5.0).contains(&v) {
        return Err(format!("{text} is outside the scale 1 to 5"));
    }
    if v.fract() != 0.0 {
        return Err(format!(
            "{text} is not a whole number (ratings are 1, 2, 3, 4 or 5)"
        ));
    }
    Ok(v as u8)
}

/// Count, mean and sample standard deviation (n - 1; `None` for a single rating).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub std: Option<f64>,
}

fn stats(values: &[f64]) -> Option<Stats> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let std = (n > 1).then(|| {
        let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some(Stats { n, mean, std })
}

/// Agreement on one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Krippendorff's alpha, interval metric; null when undefined.
    pub alpha: Option<f64>,
    /// Units (one answer on one dimension) rated by at least two raters.
    pub units: usize,
    /// Ratings in those units.
    pub ratings: usize,
}

impl From<Alpha> for Agreement {
    fn from(a: Alpha) -> Self {
        Agreement {
            alpha: a.alpha,
            units: a.units,
            ratings: a.values,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub sheets: Vec<String>,
    pub raters: Vec<String>,
    /// Distinct answers (id, model) with at least one rating.
    pub items: usize,
    pub ratings: usize,
    /// Per model: each dimension, and "overall" over all its ratings.
    pub models: BTreeMap<String, BTreeMap<String, Stats>>,
    /// Per dimension over all models, and "overall".
    pub dimensions: BTreeMap<String, Stats>,
    /// Per dimension, and "overall" pooling every (answer, dimension) as one unit.
    pub agreement: BTreeMap<String, Agreement>,
    pub agreement_statistic: &'static str,
}

/// Reads the sheets and summarizes them. `key` maps shown model names back to run
/// names (the blind key written with the sheet).
pub fn summarize(paths: &[&Path], key: &HashMap<String, String>) -> Result<Summary> {
    let mut ratings = Vec::new();
    // Where each (rater, id, model, dimension) was rated, to catch a sheet given twice.
    let mut seen: HashMap<(String, String, String, usize), String> = HashMap::new();
    for path in paths {
        for mut r in read_sheet(path)? {
            if let Some(real) = key.get(&r.model) {
                r.model = real.clone();
            }
            let k = (r.rater.clone(), r.id.clone(), r.model.clone(), r.dimension);
            if let Some(first) = seen.insert(k, path.display().to_string()) {
                return Err(EvalError::file(
                    path,
                    format!(
                        "rater {:?} rated {} of sample {} (model {}) again; first in {first}",
                        r.rater, DIMENSIONS[r.dimension].0, r.id, r.model
                    ),
                ));
            }
            ratings.push(r);
        }
    }
    if ratings.is_empty() {
        return Err(EvalError::Usage("the sheets hold no ratings yet".into()));
    }
    let dim_name = |d: usize| DIMENSIONS[d].0.to_string();
    let mut models: BTreeMap<String, BTreeMap<String, Stats>> = BTreeMap::new();
    let model_names: BTreeSet<&str> = ratings.iter().map(|r| r.model.as_str()).collect();
    for model in model_names {
        let mine: Vec<&Rating> = ratings.iter().filter(|r| r.model == model).collect();
        let mut per = BTreeMap::new();
        for d in 0..DIMENSIONS.len() {
            let v: Vec<f64> = mine
                .iter()
                .filter(|r| r.dimension == d)
                .map(|r| r.value as f64)
                .collect();
            if let Some(s) = stats(&v) {
                per.insert(dim_name(d), s);
            }
        }
        let all: Vec<f64> = mine.iter().map(|r| r.value as f64).collect();
        per.extend(stats(&all).map(|s| ("overall".to_string(), s)));
        models.insert(model.to_string(), per);
    }
    let mut dimensions = BTreeMap::new();
    let mut agreement = BTreeMap::new();
    let mut all_units: BTreeMap<(&str, &str, usize), Vec<f64>> = BTreeMap::new();
    for r in &ratings {
        all_units
            .entry((&r.id, &r.model, r.dimension))
            .or_default()
            .push(r.value as f64);
    }
    for d in 0..DIMENSIONS.len() {
        let v: Vec<f64> = ratings
            .iter()
            .filter(|r| r.dimension == d)
            .map(|r| r.value as f64)
            .collect();
        if let Some(s) = stats(&v) {
            dimensions.insert(dim_name(d), s);
        }
        let units = all_units
            .iter()
            .filter(|(k, _)| k.2 == d)
            .map(|(_, v)| v.as_slice());
        agreement.insert(dim_name(d), krippendorff_interval(units).into());
    }
    let all: Vec<f64> = ratings.iter().map(|r| r.value as f64).collect();
    dimensions.extend(stats(&all).map(|s| ("overall".to_string(), s)));
    agreement.insert(
        "overall".into(),
        krippendorff_interval(all_units.values().map(Vec::as_slice)).into(),
    );
    let items: BTreeSet<(&str, &str)> = ratings.iter().map(|r| (&*r.id, &*r.model)).collect();
    let raters: BTreeSet<&str> = ratings.iter().map(|r| r.rater.as_str()).collect();
    Ok(Summary {
        sheets: paths.iter().map(|p| p.display().to_string()).collect(),
        raters: raters.into_iter().map(str::to_string).collect(),
        items: items.len(),
        ratings: ratings.len(),
        models,
        dimensions,
        agreement,
        agreement_statistic: "Krippendorff's alpha, interval metric",
    })
}

impl Summary {
    /// Tables for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} sheet(s), {} rater(s), {} answers rated, {} ratings\n",
            self.sheets.len(),
            self.raters.len(),
            self.items,
            self.ratings
        );
        let mut columns: Vec<&str> = DIMENSIONS.iter().map(|(d, _)| *d).collect();
        columns.push("overall");
        let width = self
            .models
            .keys()
            .map(|m| m.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = write!(out, "{:<width$}", "model");
        for c in &columns {
            let _ = write!(out, "  {c:>13}");
        }
        let _ = writeln!(out, "  {:>5}", "n");
        let cell = |s: Option<&Stats>| match s {
            None => "-".to_string(),
            Some(s) => match s.std {
                Some(sd) => format!("{:.2} ± {:.2}", s.mean, sd),
                None => format!("{:.2}", s.mean),
            },
        };
        let mut rows: Vec<(&str, &BTreeMap<String, Stats>)> =
            self.models.iter().map(|(m, s)| (m.as_str(), s)).collect();
        rows.push(("(all)", &self.dimensions));
        for (model, per) in rows {
            let _ = write!(out, "{model:<width$}");
            for c in &columns {
                let _ = write!(out, "  {:>13}", cell(per.get(*c)));
            }
            let n: usize = DIMENSIONS
                .iter()
                .filter_map(|(d, _)| per.get(*d))
                .map(|s| s.n)
                .sum();
            let _ = writeln!(out, "  {n:>5}");
        }
        let _ = writeln!(
            out,
            "\nmean ± sample standard deviation, 1 (poor) to 5 (excellent); n = ratings\n"
        );
        if self.raters.len() < 2 {
            let _ = writeln!(out, "Agreement: needs at least two raters.");
            return out;
        }
        let _ = writeln!(out, "Agreement ({}):", self.agreement_statistic);
        for c in &columns {
            let Some(a) = self.agreement.get(*c) else {
                continue;
            };
            let alpha = match a.alpha {
                Some(v) => format!("{v:>6.3}"),
                None => "     -".to_string(),
            };
            let _ = writeln!(
                out,
                "  {c:<13} {alpha}   ({} units rated by 2+ raters)",
                a.units
            );
        }
        let _ = writeln!(
            out,
            "a unit is one answer on one dimension; alpha 1 = full agreement, 0 = chance"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_are_whole_numbers_one_to_five() {
        assert_eq!(parse_rating("4"), Ok(4));
        assert_eq!(parse_rating("5.0"), Ok(5));
        assert!(parse_rating("6").unwrap_err().contains("outside the scale"));
        assert!(parse_rating("0").unwrap_err().contains("outside the scale"));
        assert!(parse_rating("3.5")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(parse_rating("good").unwrap_err().contains("not a number"));
    }

    #[test]
    fn stats_use_the_sample_deviation() {
        let s = stats(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.mean, 5.0);
        assert!((s.std.unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(stats(&[3.0]).unwrap().std, None);
    }
}
