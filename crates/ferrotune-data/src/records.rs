//! One dataset's records, read once for everyone who reads them: the pipeline, the
//! quality report and prediction. Stage 1 (source) turns the dataset's files into raw
//! records, sampled as training samples them; stage 2 (format) turns a record into a
//! [`Sample`] with its placeholders replaced.

use std::path::Path;

use crate::config::DataArgs;
use crate::conversation::Sample;
use crate::error::{DataError, RecordRef, Result};
use crate::format::{RecordFormat, Stage};
use crate::mix;
use crate::placeholders;
use crate::registry::DatasetSpec;
use crate::source::{self, RawRecord};

/// Which of a dataset's records to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The records training reads: the registry's `num_samples` (LLaMA-Factory's seeded
    /// subset, or repeats when it is larger than the dataset), then `max_samples`. A
    /// malformed line stops the read, unless `skip_invalid` sets it aside.
    AsTrained,
    /// Every record of every file in file order, nothing sampled (`num_samples` would
    /// repeat records and fake duplicates), malformed lines kept in their place as
    /// findings; then `max_samples`, counting those lines too. The quality report's view.
    Every,
}

/// One line of a dataset, in reading order.
#[derive(Debug)]
pub enum Line {
    Record(RawRecord),
    /// A line that is not a record (JSON Lines only); read with [`Coverage::Every`].
    Malformed {
        at: RecordRef,
        problem: String,
    },
}

/// What [`read`] found in one dataset.
#[derive(Debug, Default)]
pub struct DatasetRecords {
    /// In reading order.
    pub lines: Vec<Line>,
    /// Malformed lines `skip_invalid` set aside when reading as trained, in file order;
    /// they are never sampled.
    pub skipped: Vec<DataError>,
}

impl DatasetRecords {
    /// The records alone, in reading order.
    pub fn into_records(self) -> Vec<RawRecord> {
        self.lines
            .into_iter()
            .filter_map(|line| match line {
                Line::Record(raw) => Some(raw),
                Line::Malformed { .. } => None,
            })
            .collect()
    }
}

/// Reads one dataset's records (a registry entry or a path, as `spec` resolved it).
pub fn read(args: &DataArgs, spec: &DatasetSpec, coverage: Coverage) -> Result<DatasetRecords> {
    let mut read = DatasetRecords::default();
    match coverage {
        Coverage::AsTrained => {
            let mut records = Vec::new();
            for file in source::resolve_files(&spec.path)? {
                let file_records = source::read_file(&file)?;
                for error in file_records.errors {
                    if !args.skip_invalid {
                        return Err(error);
                    }
                    read.skipped.push(error);
                }
                records.extend(file_records.records);
            }
            if let Some(n) = spec.num_samples {
                records = mix::pick(records.len(), n, args.seed)
                    .into_iter()
                    .map(|i| records[i].clone())
                    .collect();
            }
            read.lines = records.into_iter().map(Line::Record).collect();
        }
        Coverage::Every => {
            for file in source::resolve_files(&spec.path)? {
                read.lines.extend(every_line(&file)?);
            }
        }
    }
    if let Some(max) = args.max_samples {
        read.lines.truncate(max);
    }
    Ok(read)
}

/// A file's records and malformed lines merged back into line order.
fn every_line(file: &Path) -> Result<Vec<Line>> {
    let file_records = source::read_file(file)?;
    let mut lines: Vec<(usize, Line)> = file_records
        .records
        .into_iter()
        .map(|raw| (raw.at.index, Line::Record(raw)))
        .collect();
    for error in file_records.errors {
        match error {
            DataError::Record { record, problem } => lines.push((
                record.index,
                Line::Malformed {
                    at: record,
                    problem,
                },
            )),
            other => return Err(other),
        }
    }
    lines.sort_by_key(|(index, _)| *index);
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}

/// A record as a sample: formatted for `stage`, placeholders replaced.
#[derive(Debug, Clone)]
pub struct Formatted {
    pub sample: Sample,
    /// The placeholder names left unreplaced in it.
    pub unreplaced: Vec<String>,
}

/// Formats one record and replaces its placeholders from the config.
pub fn format(
    args: &DataArgs,
    format: &RecordFormat,
    raw: &RawRecord,
    stage: Stage,
) -> Result<Formatted> {
    let mut sample = format.convert(raw, stage)?;
    let unreplaced = placeholders::replace_in_sample(&mut sample, &args.placeholders);
    Ok(Formatted { sample, unreplaced })
}
