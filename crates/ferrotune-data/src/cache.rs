//! A content-addressed cache of tokenized datasets: preprocess once, reuse on every later
//! run with the same inputs.
//!
//! One entry per dataset, keyed by a SHA-256 of everything that decides its examples: the
//! bytes of its data files, how they are read, the tokenizer files, the template, the
//! encoding options, placeholders, sampling and the cache format. Any change to any of them
//! is a different key, so an entry is never stale; it is only ever unused.
//!
//! An entry is a folder published atomically (written as `.KEY.partial`, then renamed;
//! [`crate::cache_build`] writes it chunk by chunk and resumes it): `ids.u32` and (when
//! some token is weighted) `weights.f32` hold every example's tokens end to end as
//! little-endian numbers, `trained.u8` a byte per token, 1 where the token is a target (a
//! label is always its token's id or -100, so the labels need no file of their own: it
//! would double the entry and the writing), `offsets.u64` where each example starts
//! (and the total at the end), `records.u64` the (file, record, line, flags) of each
//! example (flags: bit 0 truncated; bit 1 a KTO example, bit 2 its answer desirable;
//! bits 32-63, for two sequences end to end, where the second starts), and `meta.json` the dataset's report and warnings. The token files are
//! memory-mapped on load.

use std::fs::File;
use std::io::Read;
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
const FORMAT: &str = "ferrotune-data-cache-3";

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
    field(&mut h, "format", FORMAT.as_bytes());
    field(&mut h, "version", env!("CARGO_PKG_VERSION").as_bytes());
    for file in source::resolve_files(&spec.path)? {
        field(&mut h, "file", file.display().to_string().as_bytes());
        hash_file(&mut h, &file)?;
    }
    field(
        &mut h,
        "record_format",
        format!("{:?}", spec.format).as_bytes(),
    );
    field(
        &mut h,
        "num_samples",
        format!("{:?}", spec.num_samples).as_bytes(),
    );
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        let path = tokenizer.dir.join(name);
        if path.is_file() {
            field(&mut h, name, &read(&path)?);
        }
    }
    if let Some(t) = template {
        field(&mut h, "template", t.source().as_bytes());
        field(&mut h, "template_name", t.name().as_bytes());
    }
    field(
        &mut h,
        "kwargs",
        serde_json::Value::Object(args.template_kwargs())
            .to_string()
            .as_bytes(),
    );
    field(
        &mut h,
        "options",
        format!("{:?}", args.encode_options()).as_bytes(),
    );
    field(&mut h, "stage", format!("{:?}", args.stage).as_bytes());
    field(
        &mut h,
        "placeholders",
        format!("{:?}", args.placeholders).as_bytes(),
    );
    field(
        &mut h,
        "max_samples",
        format!("{:?}", args.max_samples).as_bytes(),
    );
    field(&mut h, "seed", &args.seed.to_le_bytes());
    field(&mut h, "skip_invalid", &[u8::from(args.skip_invalid)]);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn field(h: &mut Sha256, name: &str, bytes: &[u8]) {
    h.update(name.as_bytes());
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// A data file into the key as `field` would put its bytes, read a buffer at a time.
fn hash_file(h: &mut Sha256, path: &Path) -> Result<()> {
    let mut file =
        File::open(path).map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?
        .len();
    h.update(b"data");
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
    Ok(bytes)
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Meta {
    pub report: DatasetReport,
    pub warnings: Vec<String>,
    pub files: Vec<PathBuf>,
    pub examples: usize,
    pub weighted: bool,
}

/// Reads an entry's meta.json.
pub(crate) fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join("meta.json");
    serde_json::from_slice(&read(&path)?)
        .map_err(|e| DataError::file(&path, format!("malformed: {e}")))
}

/// Writes meta.json into an entry's folder.
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let path = dir.join("meta.json");
    std::fs::write(&path, serde_json::to_vec(meta).expect("serializable"))
        .map_err(|e| DataError::file(&path, format!("cannot write: {e}")))
}

/// A loaded entry: the dataset's report, warnings and its examples, mapped.
pub struct Entry {
    pub report: DatasetReport,
    pub warnings: Vec<String>,
    pub examples: MappedEntry,
}

/// An entry's token files, memory-mapped: an example is read when asked for.
pub struct MappedEntry {
    ids: memmap2::Mmap,
    trained: memmap2::Mmap,
    weights: Option<memmap2::Mmap>,
    offsets: memmap2::Mmap,
    records: memmap2::Mmap,
    files: Vec<PathBuf>,
    examples: usize,
}

impl MappedEntry {
    pub fn len(&self) -> usize {
        self.examples
    }

    pub fn is_empty(&self) -> bool {
        self.examples == 0
    }

    fn span(&self, i: usize) -> (usize, usize) {
        (
            u64_at(&self.offsets, i) as usize,
            u64_at(&self.offsets, i + 1) as usize,
        )
    }

    /// Example `i`'s token count.
    pub fn length(&self, i: usize) -> usize {
        let (start, end) = self.span(i);
        end - start
    }

    pub fn weighted(&self) -> bool {
        self.weights.is_some()
    }

    /// Example `i`'s tokens, copied out of the mapped files.
    pub fn encoded(&self, i: usize) -> Encoded {
        let (start, end) = self.span(i);
        let input_ids: Vec<u32> = (start..end).map(|t| u32_at(&self.ids, t)).collect();
        Encoded {
            labels: labels_from_mask(&input_ids, &self.trained[start..end]),
            input_ids,
            weights: self
                .weights
                .as_ref()
                .map(|w| (start..end).map(|t| f32::from_bits(u32_at(w, t))).collect()),
            truncated: u64_at(&self.records, 4 * i + 3) & 1 != 0,
            second_start: match u64_at(&self.records, 4 * i + 3) >> 32 {
                0 => None,
                k => Some(k as usize),
            },
            desirable: match u64_at(&self.records, 4 * i + 3) & 0b110 {
                0b010 => Some(false),
                0b110 => Some(true),
                _ => None,
            },
        }
    }

    /// Example `i`'s file (an index into [`MappedEntry::files`]) and record number in it.
    pub fn record_position(&self, i: usize) -> (usize, usize) {
        (
            u64_at(&self.records, 4 * i) as usize,
            u64_at(&self.records, 4 * i + 1) as usize,
        )
    }

    /// The data files the examples came from, in the order they first gave one.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn truncated(&self, i: usize) -> bool {
        u64_at(&self.records, 4 * i + 3) & 1 != 0
    }

    /// Example `i`'s supervised tokens.
    pub fn supervised_tokens(&self, i: usize) -> usize {
        let (start, end) = self.span(i);
        (start..end).filter(|&t| self.trained[t] != 0).count()
    }

    /// Where example `i` came from.
    pub fn record(&self, i: usize) -> RecordRef {
        let file = u64_at(&self.records, 4 * i) as usize;
        let line = u64_at(&self.records, 4 * i + 2);
        RecordRef::new(
            self.files
                .get(file)
                .map(PathBuf::as_path)
                .unwrap_or(Path::new("?")),
            u64_at(&self.records, 4 * i + 1) as usize,
            (line > 0).then_some(line as usize),
        )
    }
}

/// Loads the entry `key` under `root`, if there is one. A damaged entry is reported and
/// treated as missing (it is rebuilt), never trusted.
pub fn load(root: &Path, key: &str) -> Option<Entry> {
    let dir = root.join(key);
    if !dir.join("meta.json").is_file() {
        return None;
    }
    match load_entry(&dir) {
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

/// Labels from the ids and the `trained.u8` mask: the id where the token is trained,
/// -100 elsewhere.
pub(crate) fn labels_from_mask(ids: &[u32], trained: &[u8]) -> Vec<i64> {
    ids.iter()
        .zip(trained)
        .map(|(&id, &t)| {
            if t != 0 {
                i64::from(id)
            } else {
                crate::IGNORE_INDEX
            }
        })
        .collect()
}

/// An entry's report (its lengths from offsets.u64) and warnings, without loading its
/// examples.
pub fn load_report(dir: &Path) -> Result<(DatasetReport, Vec<String>)> {
    let entry = load_entry(dir)?;
    Ok((entry.report, entry.warnings))
}

/// An entry's report, warnings and mapped examples, checked against meta.json.
pub(crate) fn load_entry(dir: &Path) -> Result<Entry> {
    let meta = read_meta(dir)?;
    let ids = map(&dir.join("ids.u32"))?;
    let trained = map(&dir.join("trained.u8"))?;
    let offsets = map(&dir.join("offsets.u64"))?;
    let records = map(&dir.join("records.u64"))?;
    let weights = if meta.weighted {
        Some(map(&dir.join("weights.f32"))?)
    } else {
        None
    };
    let n = meta.examples;
    let tokens = if n == 0 || offsets.len() < 8 * (n + 1) {
        0
    } else {
        u64_at(&offsets, n) as usize
    };
    if offsets.len() != 8 * (n + 1)
        || records.len() != 32 * n
        || ids.len() != 4 * tokens
        || trained.len() != tokens
        || weights.as_ref().is_some_and(|w| w.len() != 4 * tokens)
    {
        return Err(DataError::file(
            dir,
            "the token files do not match meta.json",
        ));
    }
    let mut report = meta.report;
    report.lengths = (0..n)
        .map(|i| (u64_at(&offsets, i + 1) - u64_at(&offsets, i)) as usize)
        .collect();
    if report.lengths.iter().sum::<usize>() != tokens {
        return Err(DataError::file(dir, "offsets.u64 is not in order"));
    }
    Ok(Entry {
        report,
        warnings: meta.warnings,
        examples: MappedEntry {
            ids,
            trained,
            weights,
            offsets,
            records,
            files: meta.files,
            examples: n,
        },
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

/// Writes one dataset's entry from examples in memory (`num_samples` sampling reads the
/// records whole); returns its folder.
pub fn store(
    root: &Path,
    key: &str,
    report: &DatasetReport,
    warnings: &[String],
    samples: &[PreparedSample],
) -> Result<PathBuf> {
    use crate::dataset::ExampleSink;
    let Some(mut builder) = crate::cache_build::EntryBuilder::open(root, key)? else {
        return Ok(root.join(key));
    };
    if builder.progress().examples > 0 {
        // A partial entry of this key from a streamed run: start it again.
        drop(builder);
        let _ = std::fs::remove_dir_all(crate::cache_build::partial_dir(root, key));
        return store(root, key, report, warnings, samples);
    }
    for s in samples {
        builder.push(s.clone())?;
    }
    builder.publish(report, warnings)
}
