//! Stage 1, source: files on disk become raw JSON records, each with its [`RecordRef`].
//!
//! Supported: JSON arrays (`.json`), JSON Lines (`.jsonl`), plain text (`.txt`, one
//! document per line, as `{"text": line}`) and Parquet (`.parquet`, the format Hugging Face
//! datasets are stored in). A path may be a file, a folder (every supported file in it,
//! sorted by name) or a glob pattern.

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{DataError, RecordRef, Result};

/// One raw record and where it came from.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub at: RecordRef,
    pub value: Value,
}

const EXTENSIONS: &[&str] = &["json", "jsonl", "txt", "parquet"];

/// Expands a file, folder or glob pattern into the list of data files it names.
pub fn resolve_files(spec: &Path) -> Result<Vec<PathBuf>> {
    if spec.is_file() {
        return Ok(vec![spec.to_path_buf()]);
    }
    if spec.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(spec)
            .map_err(|e| DataError::file(spec, format!("cannot list folder: {e}")))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && has_supported_extension(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(DataError::file(
                spec,
                format!(
                    "folder holds no data files (looked for .{})",
                    EXTENSIONS.join(", .")
                ),
            ));
        }
        return Ok(files);
    }
    let pattern = spec.to_string_lossy();
    if pattern.contains(['*', '?', '[']) {
        let mut files = Vec::new();
        let paths = glob::glob(&pattern)
            .map_err(|e| DataError::file(spec, format!("invalid glob pattern: {e}")))?;
        for path in paths.flatten() {
            if path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(DataError::file(spec, "glob pattern matches no files"));
        }
        return Ok(files);
    }
    Err(DataError::file(spec, "no such file or folder"))
}

fn has_supported_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The records of one file, and the records that could not be parsed (JSON Lines only:
/// a syntax error inside a JSON array or Parquet file makes the whole file unreadable).
#[derive(Debug, Default)]
pub struct FileRecords {
    pub records: Vec<RawRecord>,
    pub errors: Vec<DataError>,
}

/// Reads every record of one file.
pub fn read_file(path: &Path) -> Result<FileRecords> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => read_json(path).map(all_valid),
        "jsonl" => read_jsonl(path),
        "txt" => read_text(path).map(all_valid),
        "parquet" => read_parquet(path).map(all_valid),
        _ => Err(DataError::file(
            path,
            format!(
                "unsupported file type (expected .{})",
                EXTENSIONS.join(", .")
            ),
        )),
    }
}

fn all_valid(records: Vec<RawRecord>) -> FileRecords {
    FileRecords {
        records,
        errors: Vec::new(),
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        DataError::file(
            path,
            format!(
                "not valid UTF-8 (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// A JSON file holds an array of records (or, leniently, a single object). Parsing goes
/// element by element so that an error names the record it is in, not just a line.
fn read_json(path: &Path) -> Result<Vec<RawRecord>> {
    parse_json(&read_to_string(path)?, path)
}

/// Parses the text of a `.json` file; `path` only labels errors.
pub fn parse_json(text: &str, path: &Path) -> Result<Vec<RawRecord>> {
    let trimmed = text.trim_start_matches('\u{feff}');
    let index = Cell::new(0usize);
    let mut deserializer = serde_json::Deserializer::from_str(trimmed);
    let parsed = RecordArray { index: &index }.deserialize(&mut deserializer);
    let values = match parsed.and_then(|v| deserializer.end().map(|_| v)) {
        Ok(values) => values,
        Err(e) => {
            let problem = format!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            );
            return Err(
                if index.get() > 0 || trimmed.trim_start().starts_with('[') {
                    DataError::record(&RecordRef::new(path, index.get(), None), problem)
                } else {
                    DataError::file(path, problem)
                },
            );
        }
    };
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| RawRecord {
            at: RecordRef::new(path, i, None),
            value,
        })
        .collect())
}

/// Deserializes `[rec, rec, ...]` (or one object) while counting elements, so that a
/// syntax error can be attributed to the record being read.
struct RecordArray<'a> {
    index: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for RecordArray<'_> {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordArray<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element::<Value>()? {
            out.push(v);
            self.index.set(out.len());
        }
        Ok(out)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Vec<Value>, A::Error> {
        let value = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(vec![value])
    }
}

use serde::Deserialize;

fn read_jsonl(path: &Path) -> Result<FileRecords> {
    Ok(parse_jsonl(&read_to_string(path)?, path))
}

/// Parses the text of a `.jsonl` file; `path` only labels errors.
pub fn parse_jsonl(text: &str, path: &Path) -> FileRecords {
    let mut out = FileRecords::default();
    let mut index = 0;
    for (i, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = RecordRef::new(path, index, Some(i + 1));
        index += 1;
        match serde_json::from_str::<Value>(line) {
            Ok(value) => out.records.push(RawRecord { at, value }),
            Err(e) => out.errors.push(DataError::record(
                &at,
                format!("malformed JSON at column {}: {e}", e.column()),
            )),
        }
    }
    out
}

fn read_text(path: &Path) -> Result<Vec<RawRecord>> {
    let text = read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = RecordRef::new(path, out.len(), Some(i + 1));
        out.push(RawRecord {
            at,
            value: serde_json::json!({ "text": line }),
        });
    }
    Ok(out)
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path) -> Result<Vec<RawRecord>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path)
        .map_err(|e| DataError::file(path, format!("cannot open: {e}")))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| DataError::file(path, format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| DataError::file(path, format!("cannot read Parquet rows: {e}")))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let at = RecordRef::new(path, i, None);
        let row =
            row.map_err(|e| DataError::record(&at, format!("cannot decode Parquet row: {e}")))?;
        out.push(RawRecord {
            at,
            value: row.to_json_value(),
        });
    }
    Ok(out)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path) -> Result<Vec<RawRecord>> {
    Err(DataError::file(
        path,
        "this build has no Parquet support (cargo feature `parquet`)",
    ))
}
