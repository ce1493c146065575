//! Fixed-size rows kept in memory up to a budget and in files of a temporary folder past
//! it: what lets the group checks run over any number of records in bounded memory.
//!
//! [`Partitions`] are keyed rows grouped by a hash of their key: a partition at a time
//! is read back and sorted, so equal keys come together without holding every key.
//! [`Column`] is one row per record, read back in order or by index.
//! Small datasets never touch the disk: the folder is made when a budget is first
//! exceeded, and removed with the [`SpillDir`].

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{DataError, Result};

/// A row of a known byte size, written little-endian.
pub trait Fixed: Sized {
    const SIZE: usize;
    fn put(&self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

pub fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl Fixed for u32 {
    const SIZE: usize = 4;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        u32_at(bytes, 0)
    }
}

/// The temporary folder the spilled rows go to, made on first use in the system's
/// temporary folder (`TMPDIR`) and removed when dropped.
#[derive(Default)]
pub struct SpillDir {
    dir: OnceLock<tempfile::TempDir>,
}

/// A spill file being written.
type Writer = (PathBuf, BufWriter<File>);

impl SpillDir {
    /// A new file `name` in the folder, written through a buffer.
    fn create(&self, name: &str) -> Result<Writer> {
        let dir = match self.dir.get() {
            Some(dir) => dir,
            None => {
                let made = tempfile::Builder::new()
                    .prefix("ferrotune-check-")
                    .tempdir()
                    .map_err(|e| {
                        DataError::file(
                            &std::env::temp_dir(),
                            format!(
                                "cannot make a folder for the check's spill files: {e} (set TMPDIR to a folder with free space)"
                            ),
                        )
                    })?;
                self.dir.get_or_init(|| made)
            }
        };
        let path = dir.path().join(name);
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| DataError::file(&path, format!("cannot create a spill file: {e}")))?;
        Ok((path, BufWriter::with_capacity(1 << 16, file)))
    }
}

/// The file behind `writer`, everything written.
fn finished((path, writer): Writer) -> Result<(PathBuf, File)> {
    let file = writer
        .into_inner()
        .map_err(|e| write_err(&path, e.into_error()))?;
    Ok((path, file))
}

/// The first `count` rows of `file`, read in order through a buffer.
fn read_rows<T: Fixed>(
    path: &Path,
    mut file: &File,
    count: usize,
    mut each: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| read_err(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut bytes = vec![0u8; T::SIZE];
    for _ in 0..count {
        reader
            .read_exact(&mut bytes)
            .map_err(|e| read_err(path, e))?;
        each(T::get(&bytes))?;
    }
    Ok(())
}

fn write_err(path: &Path, e: std::io::Error) -> DataError {
    DataError::file(
        path,
        format!("cannot write a spill file: {e} (is the disk full? set TMPDIR to a folder with free space)"),
    )
}

fn read_err(path: &Path, e: std::io::Error) -> DataError {
    DataError::file(path, format!("cannot read a spill file back: {e}"))
}

/// Keyed rows in `count` partitions by key hash.
pub struct Partitions<'d, T> {
    dir: &'d SpillDir,
    name: &'static str,
    memory: Vec<Vec<u8>>,
    files: Vec<Option<Writer>>,
    buffered: usize,
    budget: usize,
    _rows: std::marker::PhantomData<T>,
}

impl<'d, T: Fixed + Ord> Partitions<'d, T> {
    /// `budget`: bytes held in memory before every partition's rows go to its file.
    pub fn new(dir: &'d SpillDir, name: &'static str, count: usize, budget: usize) -> Self {
        Partitions {
            dir,
            name,
            memory: vec![Vec::new(); count],
            files: (0..count).map(|_| None).collect(),
            buffered: 0,
            budget,
            _rows: std::marker::PhantomData,
        }
    }

    /// `key`: a hash of what equal rows share (the partition is taken from its top bits).
    pub fn push(&mut self, key: u64, row: &T) -> Result<()> {
        let part = ((u128::from(key) * self.memory.len() as u128) >> 64) as usize;
        row.put(&mut self.memory[part]);
        self.buffered += T::SIZE;
        if self.buffered > self.budget {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        for (part, rows) in self.memory.iter_mut().enumerate() {
            if rows.is_empty() {
                continue;
            }
            if self.files[part].is_none() {
                self.files[part] = Some(self.dir.create(&format!("{}-{part}.bin", self.name))?);
            }
            let (path, file) = self.files[part].as_mut().expect("opened above");
            file.write_all(rows).map_err(|e| write_err(path, e))?;
            rows.clear();
        }
        self.buffered = 0;
        Ok(())
    }

    /// Hands every partition's rows to `each`, sorted, one partition at a time; each
    /// partition's file is removed once read.
    pub fn each_sorted(self, mut each: impl FnMut(Vec<T>) -> Result<()>) -> Result<()> {
        for (memory, file) in self.memory.into_iter().zip(self.files) {
            let mut rows: Vec<T> = Vec::new();
            if let Some(writer) = file {
                let (path, file) = finished(writer)?;
                let bytes = file.metadata().map_err(|e| read_err(&path, e))?.len() as usize;
                rows.reserve(bytes / T::SIZE + memory.len() / T::SIZE);
                read_rows(&path, &file, bytes / T::SIZE, |row| {
                    rows.push(row);
                    Ok(())
                })?;
                drop(file);
                let _ = std::fs::remove_file(&path);
            }
            rows.extend(memory.chunks_exact(T::SIZE).map(T::get));
            drop(memory);
            rows.sort_unstable();
            each(rows)?;
        }
        Ok(())
    }
}

/// One row per record in record order: the first rows in a file once the budget is
/// exceeded, the latest in memory.
pub struct Column<'d, T> {
    dir: &'d SpillDir,
    name: &'static str,
    memory: Vec<T>,
    file: Option<Writer>,
    /// Rows in the file.
    flushed: usize,
    budget_rows: usize,
    scratch: Vec<u8>,
}

impl<'d, T: Fixed + Clone> Column<'d, T> {
    pub fn new(dir: &'d SpillDir, name: &'static str, budget: usize) -> Self {
        Column {
            dir,
            name,
            memory: Vec::new(),
            file: None,
            flushed: 0,
            budget_rows: (budget / T::SIZE).max(1),
            scratch: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.flushed + self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, row: T) -> Result<()> {
        self.memory.push(row);
        if self.memory.len() >= self.budget_rows {
            if self.file.is_none() {
                self.file = Some(self.dir.create(self.name)?);
            }
            let (path, file) = self.file.as_mut().expect("opened above");
            self.scratch.clear();
            for row in self.memory.drain(..) {
                row.put(&mut self.scratch);
            }
            file.write_all(&self.scratch)
                .map_err(|e| write_err(path, e))?;
            self.flushed += self.budget_rows;
        }
        Ok(())
    }

    /// Done writing: rows can now be read.
    pub fn finish(self) -> Result<Rows<T>> {
        Ok(Rows {
            file: self.file.map(finished).transpose()?,
            flushed: self.flushed,
            memory: self.memory,
        })
    }
}

/// A finished [`Column`]; its file is removed when it is dropped.
pub struct Rows<T> {
    file: Option<(PathBuf, File)>,
    flushed: usize,
    memory: Vec<T>,
}

impl<T> Drop for Rows<T> {
    fn drop(&mut self) {
        if let Some((path, _)) = &self.file {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl<T: Fixed + Clone> Rows<T> {
    pub fn len(&self) -> usize {
        self.flushed + self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`, read from the file when it is there.
    pub fn get(&mut self, i: usize) -> Result<T> {
        if i >= self.flushed {
            return Ok(self.memory[i - self.flushed].clone());
        }
        let (path, file) = self
            .file
            .as_mut()
            .expect("rows below `flushed` are in the file");
        let mut bytes = vec![0u8; T::SIZE];
        file.seek(SeekFrom::Start((i * T::SIZE) as u64))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| read_err(path, e))?;
        Ok(T::get(&bytes))
    }

    /// Every row in order, the file read through a buffer.
    pub fn each(&self, mut each: impl FnMut(usize, T) -> Result<()>) -> Result<()> {
        if let Some((path, file)) = &self.file {
            let mut i = 0;
            read_rows(path, file, self.flushed, |row| {
                each(i, row)?;
                i += 1;
                Ok(())
            })?;
        }
        for (i, row) in self.memory.iter().enumerate() {
            each(self.flushed + i, row.clone())?;
        }
        Ok(())
    }
}

/// One bit per record.
#[derive(Debug, Clone, Default)]
pub struct Bits(Vec<u64>);

impl Bits {
    pub fn set(&mut self, i: usize) {
        if i / 64 >= self.0.len() {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Row(u64, u32);

    impl Fixed for Row {
        const SIZE: usize = 12;
        fn put(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0.to_le_bytes());
            out.extend_from_slice(&self.1.to_le_bytes());
        }
        fn get(bytes: &[u8]) -> Self {
            Row(u64_at(bytes, 0), u32_at(bytes, 8))
        }
    }

    /// A budget of a few rows forces the files; the rows come back whole and grouped.
    #[test]
    fn spilled_rows_come_back_grouped_and_in_order() {
        let dir = SpillDir::default();
        let mut parts = Partitions::new(&dir, "keys", 4, 40);
        let mut column = Column::new(&dir, "column", 20);
        for i in 0..1000u32 {
            let key = crate::quality::text::mix64(u64::from(i % 37));
            parts.push(key, &Row(key, i)).unwrap();
            column.push(i * 3).unwrap();
        }
        assert!(dir.dir.get().is_some(), "the budget was exceeded");
        let mut seen = 0;
        parts
            .each_sorted(|rows| {
                assert!(rows.windows(2).all(|w| w[0] <= w[1]));
                seen += rows.len();
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 1000);
        let mut rows = column.finish().unwrap();
        assert_eq!(rows.len(), 1000);
        assert_eq!((rows.get(3).unwrap(), rows.get(999).unwrap()), (9, 2997));
        let mut next = 0;
        rows.each(|i, v| {
            assert_eq!((i, v), (next, next as u32 * 3));
            next += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(next, 1000);
        let mut bits = Bits::default();
        bits.set(3);
        bits.set(130);
        assert!(bits.get(130) && !bits.get(4) && !bits.get(10_000));
        assert_eq!(bits.count(), 2);
    }
}
