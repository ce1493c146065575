//! Stage 1, source, for data of any size: a dataset's files read record by record through
//! buffered reads, never whole. A record comes out as its text (parsed later, in the
//! parallel stage) or, for Parquet and plain text, as a value; [`RecordStream::position`]
//! says where the stream stands, and [`RecordStream::open`] starts again from there, so an
//! interrupted preparation resumes.
//!
//! The records and their [`RecordRef`]s are those [`crate::source::read_file`] gives:
//! JSON Lines by line (blank lines skipped, a malformed line a record error), a JSON
//! array element by element (or a single object), text one document a line, Parquet row
//! by row, row group by row group.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{DataError, RecordRef, Result};
use crate::source::RawRecord;

/// A record as read: JSON text still to parse, or a value already made.
#[derive(Debug)]
pub enum RecordText {
    Json(Vec<u8>),
    Value(Value),
}

/// One record of the stream, not parsed yet.
#[derive(Debug)]
pub struct PendingRecord {
    pub at: RecordRef,
    pub text: RecordText,
    /// Where a JSON array's element starts in its file (line, column; 1-based), so that
    /// a syntax error names the file's line.
    pub origin: Option<(usize, usize)>,
}

impl PendingRecord {
    /// The record's value; malformed JSON is an error naming the record (as
    /// [`crate::source::read_file`] reports it).
    pub fn parse(self) -> Result<RawRecord> {
        let value = match self.text {
            RecordText::Value(v) => v,
            RecordText::Json(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                let problem = match self.origin {
                    None => format!("malformed JSON at column {}: {e}", e.column()),
                    Some((line, column)) => {
                        let (line, column) = if e.line() <= 1 {
                            (line, column + e.column().saturating_sub(1))
                        } else {
                            (line + e.line() - 1, e.column())
                        };
                        // serde's own "at line L column C" counts within the record.
                        let message = e.to_string();
                        let message = message
                            .rsplit_once(" at line ")
                            .map_or(message.as_str(), |(m, _)| m);
                        format!("malformed JSON at line {line} column {column}: {message}")
                    }
                };
                DataError::record(&self.at, problem)
            })?,
        };
        Ok(RawRecord { at: self.at, value })
    }
}

/// Where a stream stands: the file, and within it what the reader needs to go on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Index into the stream's files.
    pub file: usize,
    /// Bytes of the file consumed (text formats), or rows of the file read (Parquet).
    pub offset: u64,
    /// Records of the file read so far.
    pub index: usize,
    /// Lines of the file consumed (JSON Lines and text).
    pub line: usize,
}

/// A dataset's files read as one stream of records.
pub struct RecordStream {
    files: Vec<PathBuf>,
    at: Position,
    reader: Option<Reader>,
    /// An error met while filling a chunk, given after the chunk's records: a record
    /// before it that does not parse is the error to report first.
    deferred: Option<DataError>,
}

enum Reader {
    /// JSON Lines (`text: false`) or plain text (`text: true`).
    Lines {
        input: BufReader<File>,
        text: bool,
    },
    Array(ArrayReader),
    #[cfg(feature = "parquet")]
    Parquet(ParquetReader),
}

impl RecordStream {
    /// The stream over `files` from `from` (the start: `Position::default()`).
    pub fn open(files: Vec<PathBuf>, from: Position) -> Result<Self> {
        let mut stream = RecordStream {
            files,
            at: from,
            reader: None,
            deferred: None,
        };
        if stream.at.file < stream.files.len() {
            stream.reader = Some(stream.open_file()?);
        }
        Ok(stream)
    }

    /// Where the stream stands after the records it has given.
    pub fn position(&self) -> &Position {
        &self.at
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn open_file(&mut self) -> Result<Reader> {
        let path = &self.files[self.at.file];
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let open = || {
            let mut file =
                File::open(path).map_err(|e| DataError::file(path, format!("cannot open: {e}")))?;
            file.seek(SeekFrom::Start(self.at.offset))
                .map_err(|e| DataError::file(path, format!("cannot seek: {e}")))?;
            Ok::<_, DataError>(BufReader::with_capacity(1 << 20, file))
        };
        Ok(match ext.as_str() {
            "jsonl" => Reader::Lines {
                input: open()?,
                text: false,
            },
            "txt" => Reader::Lines {
                input: open()?,
                text: true,
            },
            "json" => Reader::Array(ArrayReader::new(open()?, path, self.at.offset)?),
            #[cfg(feature = "parquet")]
            "parquet" => Reader::Parquet(ParquetReader::new(path, self.at.offset)?),
            _ => {
                return Err(crate::source::read_file(path)
                    .err()
                    .unwrap_or_else(|| DataError::file(path, "unsupported file type")))
            }
        })
    }

    /// The next record, or `None` at the end of the last file.
    pub fn next_record(&mut self) -> Result<Option<PendingRecord>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(None);
            };
            let path = &self.files[self.at.file];
            let next = match reader {
                Reader::Lines { input, text } => next_line(input, *text, path, &mut self.at)?,
                Reader::Array(array) => array.next(path, &mut self.at)?,
                #[cfg(feature = "parquet")]
                Reader::Parquet(parquet) => parquet.next(path, &mut self.at)?,
            };
            if next.is_some() {
                return Ok(next);
            }
            self.at = Position {
                file: self.at.file + 1,
                ..Position::default()
            };
            self.reader = None;
            if self.at.file < self.files.len() {
                self.reader = Some(self.open_file()?);
            }
        }
    }

    /// Up to `records` records, fewer at the end (none when the stream is done).
    pub fn next_chunk(&mut self, records: usize) -> Result<Vec<PendingRecord>> {
        let mut out = Vec::with_capacity(records.min(1 << 16));
        while out.len() < records {
            match self.next_record() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The next non-blank line of a JSON Lines or text file, as read_file reports it.
fn next_line(
    input: &mut BufReader<File>,
    text: bool,
    path: &Path,
    at: &mut Position,
) -> Result<Option<PendingRecord>> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        at.offset += n as u64;
        at.line += 1;
        // As `str::lines`: the end of line (\n or \r\n) is not part of the line.
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        // A byte order mark starts a JSON Lines file's first line only (text files keep
        // it, as read_file does).
        let body: &[u8] = if at.line == 1 && !text {
            line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&line)
        } else {
            &line
        };
        let body = std::str::from_utf8(body).map_err(|e| {
            DataError::file(
                path,
                format!(
                    "not valid UTF-8 (line {}, byte {} of the line)",
                    at.line,
                    e.valid_up_to()
                ),
            )
        })?;
        if body.trim().is_empty() {
            continue;
        }
        let record = RecordRef::new(path, at.index, Some(at.line));
        at.index += 1;
        let text = if text {
            RecordText::Value(serde_json::json!({ "text": body }))
        } else {
            RecordText::Json(body.as_bytes().to_vec())
        };
        return Ok(Some(PendingRecord {
            at: record,
            text,
            origin: None,
        }));
    }
}

/// A JSON array read element by element: a scanner finds where each element ends
/// (strings and nesting followed byte by byte) and hands over its text. A file holding a
/// single object is one record, as read_file reads it.
struct ArrayReader {
    input: BufReader<File>,
    state: ArrayState,
    /// Bytes since the last line break (the column before the next byte, 0-based).
    column: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArrayState {
    /// Before the opening bracket (or the single object).
    Start,
    /// Inside the array, before an element or the closing bracket.
    Elements,
    Done,
}

impl ArrayReader {
    /// Reading from `offset`: the start, just after an element, or the end of a file
    /// that was read whole.
    fn new(input: BufReader<File>, path: &Path, offset: u64) -> Result<Self> {
        let len = input
            .get_ref()
            .metadata()
            .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?
            .len();
        let state = match offset {
            0 => ArrayState::Start,
            o if o >= len => ArrayState::Done,
            _ => ArrayState::Elements,
        };
        Ok(ArrayReader {
            input,
            state,
            column: 0,
        })
    }

    fn byte(&mut self, path: &Path, at: &mut Position) -> Result<Option<u8>> {
        let buf = self
            .input
            .fill_buf()
            .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
        let Some(&b) = buf.first() else {
            return Ok(None);
        };
        self.input.consume(1);
        self.advance(&[b], at);
        Ok(Some(b))
    }

    /// Counts consumed bytes into the position, lines and column.
    fn advance(&mut self, bytes: &[u8], at: &mut Position) {
        at.offset += bytes.len() as u64;
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                at.line += bytes.iter().filter(|&&b| b == b'\n').count();
                self.column = bytes.len() - last - 1;
            }
            None => self.column += bytes.len(),
        }
    }

    /// The next byte that is not JSON whitespace.
    fn skip_space(&mut self, path: &Path, at: &mut Position) -> Result<Option<u8>> {
        loop {
            match self.byte(path, at)? {
                Some(b' ' | b'\t' | b'\n' | b'\r') => {}
                other => return Ok(other),
            }
        }
    }

    fn malformed(&self, path: &Path, at: &Position, problem: &str) -> DataError {
        DataError::record(
            &RecordRef::new(path, at.index, None),
            format!("malformed JSON array: {problem}"),
        )
    }

    fn next(&mut self, path: &Path, at: &mut Position) -> Result<Option<PendingRecord>> {
        match self.state {
            ArrayState::Done => return Ok(None),
            ArrayState::Start => {
                // Skip a byte order mark.
                let mut first = self.skip_space(path, at)?;
                if first == Some(0xef) {
                    for want in [0xbb, 0xbf] {
                        if self.byte(path, at)? != Some(want) {
                            return Err(DataError::file(path, "not valid UTF-8 at its start"));
                        }
                    }
                    first = self.skip_space(path, at)?;
                }
                match first {
                    Some(b'[') => self.state = ArrayState::Elements,
                    Some(b'{') => {
                        // One object: the whole file is one record.
                        let origin = (at.line + 1, self.column);
                        let mut text = vec![b'{'];
                        self.rest_of_value(b'{', &mut text, path, at)?;
                        if self.skip_space(path, at)?.is_some() {
                            return Err(DataError::file(
                                path,
                                "malformed JSON: trailing characters after the object",
                            ));
                        }
                        self.state = ArrayState::Done;
                        return Ok(Some(self.element(text, path, at, origin)));
                    }
                    _ => {
                        return Err(DataError::file(
                            path,
                            "malformed JSON: expected an array of records",
                        ))
                    }
                }
            }
            ArrayState::Elements => {}
        }
        let first = match self.skip_space(path, at)? {
            Some(b']') if at.index == 0 => {
                self.finish(path, at)?;
                return Ok(None);
            }
            Some(b',') if at.index > 0 => self.skip_space(path, at)?,
            Some(b']') => {
                self.finish(path, at)?;
                return Ok(None);
            }
            other if at.index == 0 => other,
            _ => return Err(self.malformed(path, at, "expected ',' or ']' after a record")),
        };
        let Some(first) = first else {
            return Err(self.malformed(path, at, "the file ends inside the array"));
        };
        let origin = (at.line + 1, self.column);
        let mut text = vec![first];
        if matches!(first, b'{' | b'[' | b'"') {
            self.rest_of_value(first, &mut text, path, at)?;
        } else {
            // A scalar: up to the next delimiter, left for the next call.
            loop {
                let buf = self
                    .input
                    .fill_buf()
                    .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
                match buf.first() {
                    Some(b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') | None => break,
                    Some(&b) => {
                        text.push(b);
                        self.input.consume(1);
                        self.advance(&[b], at);
                    }
                }
            }
        }
        Ok(Some(self.element(text, path, at, origin)))
    }

    /// After the closing bracket only whitespace may follow.
    fn finish(&mut self, path: &Path, at: &mut Position) -> Result<()> {
        self.state = ArrayState::Done;
        match self.skip_space(path, at)? {
            None => Ok(()),
            Some(_) => Err(DataError::file(
                path,
                "malformed JSON: trailing characters after the array",
            )),
        }
    }

    fn element(
        &self,
        text: Vec<u8>,
        path: &Path,
        at: &mut Position,
        origin: (usize, usize),
    ) -> PendingRecord {
        let record = RecordRef::new(path, at.index, None);
        at.index += 1;
        PendingRecord {
            at: record,
            text: RecordText::Json(text),
            origin: Some(origin),
        }
    }

    /// The rest of an object, array or string whose first byte `open` is in `text`.
    fn rest_of_value(
        &mut self,
        open: u8,
        text: &mut Vec<u8>,
        path: &Path,
        at: &mut Position,
    ) -> Result<()> {
        let (mut depth, mut in_string, mut escaped) = (0usize, open == b'"', false);
        if open != b'"' {
            depth = 1;
        }
        loop {
            let buf = self
                .input
                .fill_buf()
                .map_err(|e| DataError::file(path, format!("cannot read: {e}")))?;
            if buf.is_empty() {
                return Err(self.malformed(path, at, "the file ends inside a record"));
            }
            let mut used = 0;
            let mut done = false;
            for &b in buf {
                used += 1;
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            done = true;
                            break;
                        }
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            done = true;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            text.extend_from_slice(&buf[..used]);
            let consumed = buf[..used].to_vec();
            self.input.consume(used);
            self.advance(&consumed, at);
            if done {
                return Ok(());
            }
        }
    }
}

/// A Parquet file read row group by row group (one group's rows held at a time);
/// `offset` counts the rows read.
#[cfg(feature = "parquet")]
struct ParquetReader {
    reader: parquet::file::reader::SerializedFileReader<File>,
    group: usize,
    rows: Option<std::vec::IntoIter<parquet::record::Row>>,
    /// Rows of the next group to skip (resuming inside it).
    skip: usize,
}

#[cfg(feature = "parquet")]
impl ParquetReader {
    fn new(path: &Path, rows_read: u64) -> Result<Self> {
        use parquet::file::reader::FileReader;
        let file =
            File::open(path).map_err(|e| DataError::file(path, format!("cannot open: {e}")))?;
        let reader = parquet::file::reader::SerializedFileReader::new(file)
            .map_err(|e| DataError::file(path, format!("not a readable Parquet file: {e}")))?;
        // The group the resumed row lies in, and the rows of it already read.
        let (mut group, mut skip) = (0, rows_read as usize);
        while group < reader.num_row_groups() {
            let n = reader.metadata().row_group(group).num_rows() as usize;
            if skip < n {
                break;
            }
            skip -= n;
            group += 1;
        }
        Ok(ParquetReader {
            reader,
            group,
            rows: None,
            skip,
        })
    }

    fn next(&mut self, path: &Path, at: &mut Position) -> Result<Option<PendingRecord>> {
        use parquet::file::reader::FileReader;
        loop {
            if self.rows.is_none() {
                if self.group >= self.reader.num_row_groups() {
                    return Ok(None);
                }
                let group = self.reader.get_row_group(self.group).map_err(|e| {
                    DataError::file(path, format!("cannot read Parquet row group: {e}"))
                })?;
                let first = at.index;
                let mut rows = Vec::new();
                let iter = group
                    .get_row_iter(None)
                    .map_err(|e| DataError::file(path, format!("cannot read Parquet rows: {e}")))?;
                for (k, row) in iter.enumerate().skip(self.skip) {
                    let record = RecordRef::new(path, first + k - self.skip, None);
                    rows.push(row.map_err(|e| {
                        DataError::record(&record, format!("cannot decode Parquet row: {e}"))
                    })?);
                }
                self.skip = 0;
                self.rows = Some(rows.into_iter());
                self.group += 1;
            }
            match self.rows.as_mut().and_then(Iterator::next) {
                Some(row) => {
                    let record = RecordRef::new(path, at.index, None);
                    at.index += 1;
                    at.offset += 1;
                    return Ok(Some(PendingRecord {
                        at: record,
                        text: RecordText::Value(row.to_json_value()),
                        origin: None,
                    }));
                }
                None => self.rows = None,
            }
        }
    }
}

/// Every record of `files` from the start, parsed (the tests' view of the stream).
pub fn read_all(files: Vec<PathBuf>) -> Result<Vec<RawRecord>> {
    let mut stream = RecordStream::open(files, Position::default())?;
    let mut out = Vec::new();
    while let Some(r) = stream.next_record()? {
        out.push(r.parse()?);
    }
    Ok(out)
}
