//! A content-addressed cache of tokenized datasets: preprocess once, reuse on every later
//! run with the same inputs.
//!
//! One entry per dataset, keyed by a SHA-256 of everything that decides its examples: the
//! bytes of its data files, how they are read, the tokenizer files, the template, the
//! encoding options, placeholders, sampling and the cache format. Any change to any of them
//! is a different key, so an entry is never stale; it is only ever unused.
//!
//! An entry is a folder written atomically (a temporary folder, then a rename):
//! `ids.u32`, `labels.i32` and (when some token is weighted) `weights.f32` hold every
//! example's tokens end to end as little-endian numbers, `offsets.u64` where each example
//! starts, `records.u64` the (file, record, line, truncated) of each example, and `meta.json` the
//! dataset's report and warnings. The token files are memory-mapped on load.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::DataArgs;
use crate::encode::Encoded;
use crate::error::{DataError, RecordRef, Result};
use crate::pipeline::{DatasetReport, PreparedSample};
use crate::registry::DatasetSpec;
use crate::source;
use crate::template::ChatTemplate;
use crate::tokenizer::TokenizerBundle;

/// Bumped whenever the encoding or the entry layout changes.
const FORMAT: &str = "ferrotune-data-cache-1";

/// Where caches go unless the config's `data_cache_dir` says otherwise:
/// `$FERROTUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/ferrotune/data`, else
/// `~/.cache/ferrotune/data`.
pub fn default_root() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERROTUNE_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferrotune").join("data"))
}

/// The key of one dataset's entry.
pub fn key(
    args: &DataArgs,
    spec: &DatasetSpec,
    tokenizer: &TokenizerBundle,
    template: Option<&ChatTemplate>,
) -> Result<String> {
    let mut h = Sha256::new();
    let mut field = |name: &str, bytes: &[u8]| {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("format", FORMAT.as_bytes());
    field("version", env!("CARGO_PKG_VERSION").as_bytes());
    for file in source::resolve_files(&spec.path)? {
        let bytes = read(&file)?;
        field("file", file.display().to_string().as_bytes());
        field("data", &bytes);
    }
    field("record_format", format!("{:?}", spec.format).as_bytes());
    field("num_samples", format!("{:?}", spec.num_samples).as_bytes());
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let path = tokenizer.dir.join(name);
        if path.is_file() {
            field(name, &read(&path)?);
        }
    }
    if let Some(t) = template {
        field("template", t.source().as_bytes());
        field("template_name", t.name().as_bytes());
    }
    field(
        "kwargs",
        serde_json::Value::Object(args.template_kwargs())
            .to_string()
            .as_bytes(),
    );
    field("options", format!("{:?}", args.encode_options()).as_bytes());
    field("stage", format!("{:?}", args.stage).as_bytes());
    field(
        "placeholders",
        format!("{:?}", args.placeholders).as_bytes(),
    );
    field("max_samples", format!("{:?}", args.max_samples).as_bytes());
    field("seed", &args.seed.to_le_bytes());
    field("skip_invalid", &[u8::from(args.skip_invalid)]);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    Ok(bytes)
}

#[derive(Serialize, Deserialize)]
struct Meta {
    report: DatasetReport,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
    examples: usize,
    weighted: bool,
}

/// A loaded entry: the dataset's report, warnings and examples.
pub struct Entry {
    pub report: DatasetReport,
    pub warnings: Vec<String>,
    pub samples: Vec<PreparedSample>,
}

/// Loads the entry `key` under `root`, if there is one. A damaged entry is reported and
/// treated as missing (it is rebuilt), never trusted.
pub fn load(root: &Path, key: &str, dataset: usize) -> Option<Entry> {
    let dir = root.join(key);
    if !dir.join("meta.json").is_file() {
        return None;
    }
    match load_entry(&dir, dataset) {
        Ok(entry) => Some(entry),
        Err(e) => {
            eprintln!(
                "warning: rebuilding the damaged cache entry {}: {e}",
                dir.display()
            );
            let _ = std::fs::remove_dir_all(&dir);
            None
        }
    }
}

fn load_entry(dir: &Path, dataset: usize) -> Result<Entry> {
    let meta_path = dir.join("meta.json");
    let meta: Meta = serde_json::from_slice(&read(&meta_path)?)
        .map_err(|e| DataError::file(&meta_path, format!("malformed: {e}")))?;
    let ids = map(&dir.join("ids.u32"))?;
    let labels = map(&dir.join("labels.i32"))?;
    let offsets = map(&dir.join("offsets.u64"))?;
    let records = map(&dir.join("records.u64"))?;
    let weights = if meta.weighted {
        Some(map(&dir.join("weights.f32"))?)
    } else {
        None
    };
    let n = meta.examples;
    let offset = |i: usize| u64_at(&offsets, i) as usize;
    let tokens = if n == 0 { 0 } else { offset(n) };
    if offsets.len() != 8 * (n + 1)
        || records.len() != 32 * n
        || ids.len() != 4 * tokens
        || labels.len() != 4 * tokens
        || weights.as_ref().is_some_and(|w| w.len() != 4 * tokens)
    {
        return Err(DataError::file(
            dir,
            "the token files do not match meta.json",
        ));
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (start, end) = (offset(i), offset(i + 1));
        let file = u64_at(&records, 4 * i) as usize;
        let line = u64_at(&records, 4 * i + 2);
        let at = RecordRef::new(
            meta.files
                .get(file)
                .map(PathBuf::as_path)
                .unwrap_or(Path::new("?")),
            u64_at(&records, 4 * i + 1) as usize,
            (line > 0).then_some(line as usize),
        );
        let encoded = Encoded {
            input_ids: (start..end).map(|t| u32_at(&ids, t)).collect(),
            labels: (start..end)
                .map(|t| i64::from(u32_at(&labels, t) as i32))
                .collect(),
            weights: weights
                .as_ref()
                .map(|w| (start..end).map(|t| f32::from_bits(u32_at(w, t))).collect()),
            truncated: u64_at(&records, 4 * i + 3) != 0,
        };
        samples.push(PreparedSample {
            dataset,
            at,
            encoded,
        });
    }
    Ok(Entry {
        report: meta.report,
        warnings: meta.warnings,
        samples,
    })
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).map_err(|e| DataError::file(path, format!("cannot open: {e}")))?;
    // SAFETY: entries are written once to a temporary folder and renamed into place; no
    // one writes to a published entry, so the mapped bytes do not change under us.
    unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| DataError::file(path, format!("cannot map: {e}")))
}

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"))
}

/// Writes one dataset's entry atomically.
pub fn store(
    root: &Path,
    key: &str,
    report: &DatasetReport,
    warnings: &[String],
    samples: &[PreparedSample],
) -> Result<PathBuf> {
    let dir = root.join(key);
    let tmp = root.join(format!(".{key}.tmp-{}", std::process::id()));
    let io = |path: &Path, e: std::io::Error| DataError::file(path, format!("cannot write: {e}"));
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let weighted = samples.iter().any(|s| s.encoded.weights.is_some());
    let mut files: Vec<PathBuf> = Vec::new();
    {
        let open = |name: &str| -> Result<BufWriter<File>> {
            let path = tmp.join(name);
            File::create(&path)
                .map(BufWriter::new)
                .map_err(|e| io(&path, e))
        };
        let (mut ids, mut labels, mut offsets, mut records) = (
            open("ids.u32")?,
            open("labels.i32")?,
            open("offsets.u64")?,
            open("records.u64")?,
        );
        let mut weights = if weighted {
            Some(open("weights.f32")?)
        } else {
            None
        };
        let mut at = 0u64;
        let put =
            |w: &mut BufWriter<File>, bytes: &[u8]| w.write_all(bytes).map_err(|e| io(&tmp, e));
        for s in samples {
            let e = &s.encoded;
            put(&mut offsets, &at.to_le_bytes())?;
            at += e.len() as u64;
            let file = match files.iter().position(|f| *f == s.at.file) {
                Some(k) => k,
                None => {
                    files.push(s.at.file.clone());
                    files.len() - 1
                }
            };
            let line = s.at.line.unwrap_or(0) as u64;
            for v in [file as u64, s.at.index as u64, line, u64::from(e.truncated)] {
                put(&mut records, &v.to_le_bytes())?;
            }
            for &id in &e.input_ids {
                put(&mut ids, &id.to_le_bytes())?;
            }
            for &l in &e.labels {
                put(&mut labels, &(l as i32).to_le_bytes())?;
            }
            if let Some(w) = weights.as_mut() {
                for k in 0..e.len() {
                    let v = e.weights.as_ref().map_or(1.0, |ws| ws[k]);
                    put(w, &v.to_le_bytes())?;
                }
            }
        }
        put(&mut offsets, &at.to_le_bytes())?;
        for mut w in [ids, labels, offsets, records].into_iter().chain(weights) {
            w.flush().map_err(|e| io(&tmp, e))?;
        }
    }
    let meta = Meta {
        report: report.clone(),
        warnings: warnings.to_vec(),
        files,
        examples: samples.len(),
        weighted,
    };
    let meta_path = tmp.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("serializable"))
        .map_err(|e| io(&meta_path, e))?;
    if dir.exists() {
        // Another process filled it meanwhile: same key, same content.
        let _ = std::fs::remove_dir_all(&tmp);
    } else {
        std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    }
    Ok(dir)
}
