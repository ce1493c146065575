//! A cache entry written as the examples come, chunk by chunk, and resumed after an
//! interruption: the entry's files grow in a partial folder (`.KEY.partial` beside the
//! entries), and after every chunk `progress.json` records how far the files and the
//! source had got, with the report so far. A later run with the same key truncates the
//! files to the last complete chunk and goes on from the source position recorded there,
//! so the published entry is the one an uninterrupted run writes, byte for byte. A lock
//! file keeps two processes from filling one entry; the entry is published by renaming
//! the folder once whole (the layout is [`crate::cache`]'s).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::{write_meta, Meta};
use crate::dataset::ExampleSink;
use crate::error::{DataError, Result};
use crate::pipeline::{DatasetReport, PreparedSample};
use crate::stream::Position;

/// How far a partial entry got: written after every complete chunk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Where the source stands after the chunk.
    pub position: Position,
    pub examples: u64,
    pub tokens: u64,
    /// Whether weights.f32 exists (some example carried loss weights).
    pub weighted: bool,
    /// The data files examples came from (records.u64 indexes this list).
    pub files: Vec<PathBuf>,
    /// The report so far (without lengths: offsets.u64 holds them).
    pub report: DatasetReport,
    pub warnings: Vec<String>,
}

/// [`Progress`] as written, borrowing the report.
#[derive(Serialize)]
struct ProgressRecord<'a> {
    position: &'a Position,
    examples: u64,
    tokens: u64,
    weighted: bool,
    files: &'a [PathBuf],
    report: &'a DatasetReport,
    warnings: &'a [String],
}

/// The token files of an entry, appended to.
struct Files {
    ids: BufWriter<File>,
    trained: BufWriter<File>,
    weights: Option<BufWriter<File>>,
    offsets: BufWriter<File>,
    records: BufWriter<File>,
}

/// An entry being written.
pub struct EntryBuilder {
    root: PathBuf,
    key: String,
    partial: PathBuf,
    files: Files,
    progress: Progress,
    /// Held for the builder's life: another process waits for it.
    _lock: File,
}

const PROGRESS: &str = "progress.json";

fn io(path: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
    move |e| DataError::file(path, format!("cannot write: {e}"))
}

/// An interrupted preparation of another entry untouched for this long is removed: its
/// inputs have changed since (else its run would have resumed it), and a large dataset's
/// partial entry holds gigabytes.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Removes the partial folders (and lock files) under `root` of entries other than `key`
/// that no process is preparing (their lock is free) and that have not changed for
/// `older_than`, saying so on standard error.
pub fn remove_stale_partials(root: &Path, key: &str, older_than: std::time::Duration) {
    let Ok(dir) = std::fs::read_dir(root) else {
        return;
    };
    for item in dir.flatten() {
        let name = item.file_name().to_string_lossy().into_owned();
        let Some(other) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".partial"))
        else {
            continue;
        };
        if other == key {
            continue;
        }
        let path = item.path();
        let changed = std::fs::metadata(path.join(PROGRESS))
            .or_else(|_| item.metadata())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if changed.is_none_or(|age| age < older_than) {
            continue;
        }
        let lock_path = root.join(format!(".{other}.lock"));
        let Ok(lock) = File::create(&lock_path) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        let bytes: u64 = std::fs::read_dir(&path)
            .map(|d| {
                d.flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if std::fs::remove_dir_all(&path).is_ok() {
            let days = changed.map_or(0, |d| d.as_secs() / 86_400);
            eprintln!(
                "data: removed an interrupted preparation of another cache entry, untouched for {days} days ({}, {:.1} MB)",
                path.display(),
                bytes as f64 / 1e6
            );
        }
        let _ = std::fs::remove_file(&lock_path);
    }
}

/// The partial folder of `key` under `root`.
pub fn partial_dir(root: &Path, key: &str) -> PathBuf {
    root.join(format!(".{key}.partial"))
}

/// Opens a token file for appending after truncating it to `len` bytes (a resumed
/// entry's last complete chunk), creating it when new.
fn append(path: &Path, len: u64) -> Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let have = file.metadata().map_err(io(path))?.len();
    if have < len {
        return Err(DataError::file(
            path,
            format!("holds {have} bytes, progress.json says {len}"),
        ));
    }
    file.set_len(len).map_err(io(path))?;
    let mut file = file;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::End(0)).map_err(io(path))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

impl EntryBuilder {
    /// Takes the entry's lock (waiting while another process holds it) and opens its
    /// partial folder, resumed when a complete chunk was recorded there. `None` when the
    /// entry was published meanwhile (by the process waited for).
    pub fn open(root: &Path, key: &str) -> Result<Option<Self>> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let lock_path = root.join(format!(".{key}.lock"));
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            eprintln!(
                "data: waiting for another process preparing the cache entry {}",
                root.join(key).display()
            );
            lock.lock().map_err(io(&lock_path))?;
        }
        if root.join(key).join("meta.json").is_file() {
            return Ok(None);
        }
        remove_stale_partials(root, key, STALE_AFTER);
        let partial = partial_dir(root, key);
        let progress = match read_progress(&partial) {
            Some(p) => p,
            None => {
                let _ = std::fs::remove_dir_all(&partial);
                std::fs::create_dir_all(&partial).map_err(io(&partial))?;
                Progress::default()
            }
        };
        let files = Files {
            ids: append(&partial.join("ids.u32"), 4 * progress.tokens)?,
            trained: append(&partial.join("trained.u8"), progress.tokens)?,
            weights: if progress.weighted {
                Some(append(&partial.join("weights.f32"), 4 * progress.tokens)?)
            } else {
                let _ = std::fs::remove_file(partial.join("weights.f32"));
                None
            },
            offsets: append(&partial.join("offsets.u64"), 8 * progress.examples)?,
            records: append(&partial.join("records.u64"), 32 * progress.examples)?,
        };
        Ok(Some(EntryBuilder {
            root: root.to_path_buf(),
            key: key.to_string(),
            partial,
            files,
            progress,
            _lock: lock,
        }))
    }

    /// What a resumed entry had recorded (the start for a new one).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The finished entry, renamed into place; returns its folder.
    pub fn publish(mut self, report: &DatasetReport, warnings: &[String]) -> Result<PathBuf> {
        let tokens = self.progress.tokens;
        let offsets = self.partial.join("offsets.u64");
        self.files
            .offsets
            .write_all(&tokens.to_le_bytes())
            .map_err(io(&offsets))?;
        self.flush()?;
        let meta = Meta {
            report: report.clone(),
            warnings: warnings.to_vec(),
            files: std::mem::take(&mut self.progress.files),
            examples: self.progress.examples as usize,
            weighted: self.progress.weighted,
        };
        write_meta(&self.partial, &meta)?;
        let _ = std::fs::remove_file(self.partial.join(PROGRESS));
        let dir = self.root.join(&self.key);
        std::fs::rename(&self.partial, &dir).map_err(io(&dir))?;
        let _ = std::fs::remove_file(self.root.join(format!(".{}.lock", self.key)));
        Ok(dir)
    }

    fn flush(&mut self) -> Result<()> {
        let partial = &self.partial;
        let f = &mut self.files;
        for w in [&mut f.ids, &mut f.trained, &mut f.offsets, &mut f.records]
            .into_iter()
            .chain(f.weights.as_mut())
        {
            w.flush().map_err(io(partial))?;
        }
        Ok(())
    }
}

impl ExampleSink for EntryBuilder {
    fn wants_lengths(&self) -> bool {
        false
    }

    fn push(&mut self, s: PreparedSample) -> Result<()> {
        let e = &s.encoded;
        let partial = self.partial.clone();
        let put = |w: &mut BufWriter<File>, bytes: &[u8]| w.write_all(bytes).map_err(io(&partial));
        let p = &mut self.progress;
        if e.weights.is_some() && !p.weighted {
            // The first weighted example: the earlier tokens all weigh 1.
            let path = self.partial.join("weights.f32");
            let mut w = append(&path, 0)?;
            for _ in 0..p.tokens {
                put(&mut w, &1f32.to_le_bytes())?;
            }
            self.files.weights = Some(w);
            p.weighted = true;
        }
        let f = &mut self.files;
        put(&mut f.offsets, &p.tokens.to_le_bytes())?;
        p.tokens += e.len() as u64;
        p.examples += 1;
        let file = match p
            .files
            .iter()
            .position(|f| f.as_os_str() == s.at.file.as_os_str())
        {
            Some(k) => k,
            None => {
                p.files.push(s.at.file.clone());
                p.files.len() - 1
            }
        };
        let line = s.at.line.unwrap_or(0) as u64;
        let mut record = [0u8; 32];
        let desirable = match e.desirable {
            None => 0,
            Some(false) => 0b010,
            Some(true) => 0b110,
        };
        let flags = u64::from(e.truncated) | desirable | (e.second_start.unwrap_or(0) as u64) << 32;
        for (k, v) in [file as u64, s.at.index as u64, line, flags]
            .into_iter()
            .enumerate()
        {
            record[8 * k..8 * k + 8].copy_from_slice(&v.to_le_bytes());
        }
        put(&mut f.records, &record)?;
        let mut bytes = Vec::with_capacity(4 * e.len());
        bytes.extend(e.input_ids.iter().flat_map(|id| id.to_le_bytes()));
        put(&mut f.ids, &bytes)?;
        bytes.clear();
        for (&id, &label) in e.input_ids.iter().zip(&e.labels) {
            match label {
                crate::IGNORE_INDEX => bytes.push(0),
                l if l == i64::from(id) => bytes.push(1),
                l => {
                    return Err(DataError::file(
                        &partial,
                        format!("{}: label {l} is neither its token's id ({id}) nor -100, which the cache cannot hold", s.at),
                    ))
                }
            }
        }
        put(&mut f.trained, &bytes)?;
        if let Some(w) = f.weights.as_mut() {
            bytes.clear();
            for k in 0..e.len() {
                let v = e.weights.as_ref().map_or(1.0, |ws| ws[k]);
                bytes.extend(v.to_le_bytes());
            }
            put(w, &bytes)?;
        }
        Ok(())
    }

    fn chunk_done(
        &mut self,
        report: &DatasetReport,
        warnings: &[String],
        at: Option<&Position>,
    ) -> Result<()> {
        let Some(at) = at else {
            return Ok(());
        };
        self.flush()?;
        self.progress.position = at.clone();
        self.progress.warnings = warnings.to_vec();
        // The report is written as it stands (its lengths are not serialized).
        let p = &self.progress;
        let record = ProgressRecord {
            position: &p.position,
            examples: p.examples,
            tokens: p.tokens,
            weighted: p.weighted,
            files: &p.files,
            report,
            warnings: &p.warnings,
        };
        let path = self.partial.join(PROGRESS);
        let tmp = self.partial.join("progress.json.tmp");
        let text = serde_json::to_vec(&record).expect("serializable");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
}

pub(crate) fn read_progress(partial: &Path) -> Option<Progress> {
    let text = std::fs::read(partial.join(PROGRESS)).ok()?;
    serde_json::from_slice(&text).ok()
}
