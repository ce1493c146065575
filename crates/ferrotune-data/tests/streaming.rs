//! Data of any size: the record stream gives the records `source::read_file` gives, from
//! any position it reported, and a dataset streamed into the cache chunk by chunk gives
//! the entry the in-memory path gives, byte for byte, also when it was interrupted.

use std::path::{Path, PathBuf};

use ferrotune_data::source;
use ferrotune_data::stream::{Position, RecordStream};
use ferrotune_testing::{shared, workspace_root, TempDir};

use common::fingerprint;

mod common;

/// The files the stream is checked on: the shared demo sets, the examples, and edge cases.
fn files(dir: &TempDir) -> Vec<PathBuf> {
    let mut files = vec![
        shared("data/alpaca_en_demo.json"),
        shared("data/alpaca_zh_demo.json"),
        shared("data/identity.json"),
        shared("data/glaive_toolcall_en_demo.json"),
        shared("data/c4_demo.jsonl"),
        shared("data/dpo_en_demo.json"),
        workspace_root().join("examples/data/tool_demo.jsonl"),
    ];
    files.push(dir.write(
        "bom_crlf.jsonl",
        "\u{feff}{\"instruction\": \"a\", \"output\": \"b\"}\r\n\r\n  \n{\"instruction\": \"[{\\\"x\\\"\", \"output\": \"}]\"}\r\n{not json}\n{\"instruction\": \"c\", \"output\": \"d\"}",
    ));
    files.push(dir.write(
        "tricky.json",
        "\u{feff} [ {\"instruction\": \"brackets ] } [ { in \\\"strings\\\" \\\\\", \"output\": \"x\"},\n\n{\"instruction\": \"é 你好\", \"output\": \"y\", \"n\": [1, {\"a\": []}]} ,{\"instruction\":\"z\",\"output\":\"w\"}]\n",
    ));
    files.push(dir.write(
        "one.json",
        "{\"instruction\": \"one\", \"output\": \"object\"}\n",
    ));
    files.push(dir.write("empty.json", " [ ] "));
    files.push(dir.write("docs.txt", "\u{feff}first line\n\nsecond line\r\nthird"));
    files
}

/// What read_file gives for a file: records and malformed lines, in record order, as
/// (record, value or problem).
/// A record as the tests compare it: where, and its value (or that it is malformed).
type Read = Vec<(String, Result<serde_json::Value, ()>)>;

fn expected(file: &Path) -> Read {
    let read = source::read_file(file).unwrap();
    let mut out: Vec<(usize, String, Result<serde_json::Value, ()>)> = read
        .records
        .into_iter()
        .map(|r| (r.at.index, r.at.to_string(), Ok(r.value)))
        .collect();
    for e in read.errors {
        match e {
            ferrotune_data::DataError::Record { record, .. } => {
                out.push((record.index, record.to_string(), Err(())))
            }
            other => panic!("{other}"),
        }
    }
    out.sort_by_key(|(i, ..)| *i);
    out.into_iter().map(|(_, at, v)| (at, v)).collect()
}

/// The stream's records from `from` on, parsed as the pipeline parses them.
fn streamed(file: &Path, from: Position) -> (Read, Vec<Position>) {
    let mut stream = RecordStream::open(vec![file.to_path_buf()], from).unwrap();
    let (mut out, mut positions) = (Vec::new(), vec![stream.position().clone()]);
    while let Some(r) = stream.next_record().unwrap() {
        let at = r.at.to_string();
        out.push((at, r.parse().map(|raw| raw.value).map_err(|_| ())));
        positions.push(stream.position().clone());
    }
    (out, positions)
}

#[test]
fn the_stream_gives_the_records_read_file_gives_from_any_position() {
    let dir = TempDir::new("stream");
    for file in files(&dir) {
        let want = expected(&file);
        let (got, positions) = streamed(&file, Position::default());
        assert_eq!(got, want, "{}", file.display());
        // Resumed after k records, the stream gives the rest.
        for k in [
            1,
            2,
            want.len() / 2,
            want.len().saturating_sub(1),
            want.len(),
        ] {
            if k > want.len() {
                continue;
            }
            let (rest, _) = streamed(&file, positions[k].clone());
            assert_eq!(rest, want[k..], "{} resumed after {k}", file.display());
        }
    }
}

#[test]
fn a_broken_json_array_is_an_error_naming_the_record() {
    let dir = TempDir::new("stream-broken");
    for (name, text, needle) in [
        ("cut.json", "[{\"a\": 1}, {\"a\": ", "record 1"),
        (
            "no_comma.json",
            "[{\"a\": 1} {\"a\": 2}]",
            "expected ',' or ']'",
        ),
        ("scalar.json", "42", "expected an array of records"),
        ("trailing.json", "[{\"a\": 1}] x", "trailing characters"),
    ] {
        let file = dir.write(name, text);
        let mut stream = RecordStream::open(vec![file], Position::default()).unwrap();
        let mut error = None;
        loop {
            match stream.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        let error = error.unwrap_or_else(|| panic!("{name}: no error"));
        assert!(
            error.contains(name) && error.contains(needle),
            "{name}: {error}"
        );
    }
}

#[cfg(feature = "parquet")]
#[test]
fn a_parquet_stream_resumes_inside_and_across_row_groups() {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let dir = TempDir::new("stream-parquet");
    let path = dir.path().join("train.parquet");
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY instruction (UTF8); REQUIRED BYTE_ARRAY output (UTF8); }",
        )
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().build());
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    // Three row groups of 3, 1 and 2 rows.
    let mut n = 0;
    for rows in [3, 1, 2] {
        let mut group = writer.next_row_group().unwrap();
        for column in 0..2 {
            let mut col = group.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = (n..n + rows)
                .map(|i| ByteArray::from(format!("{}{i}", ["q", "a"][column]).as_str()))
                .collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            col.close().unwrap();
        }
        group.close().unwrap();
        n += rows;
    }
    writer.close().unwrap();
    let want = expected(&path);
    assert_eq!(want.len(), 6);
    let (got, positions) = streamed(&path, Position::default());
    assert_eq!(got, want);
    for k in 0..=6 {
        assert_eq!(
            streamed(&path, positions[k].clone()).0,
            want[k..],
            "after {k}"
        );
    }
}

/// An alpaca JSON Lines file of `n` distinct records (the shared demo set repeated, each
/// copy's outputs suffixed with its index), with a malformed line and a blank one in it.
fn big_jsonl(dir: &TempDir, n: usize) -> PathBuf {
    let demo: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(shared("data/alpaca_en_demo.json")).unwrap())
            .unwrap();
    let mut text = String::new();
    for i in 0..n {
        let mut r = demo[i % demo.len()].clone();
        let out = format!("{} ({i})", r["output"].as_str().unwrap());
        r["output"] = out.into();
        text.push_str(&r.to_string());
        text.push('\n');
        if i == 5000 {
            text.push_str("{broken\n\n");
        }
    }
    dir.write("data/big.jsonl", text)
}

fn big_args(dir: &TempDir, cache: &str) -> ferrotune_data::DataArgs {
    ferrotune_data::DataArgs {
        tokenizer_name_or_path: Some(workspace_root().join("examples/tokenizer")),
        dataset: vec!["big.jsonl".into()],
        dataset_dir: dir.path().join("data"),
        cutoff_len: 96,
        skip_invalid: true,
        data_cache_dir: Some(dir.path().join(cache)),
        ..ferrotune_data::DataArgs::default()
    }
}

/// Every file of a cache entry, by name.
fn entry_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn streamed_preparation_equals_reading_whole_and_resumes_to_the_same_entry() {
    use ferrotune_data::cache_build::EntryBuilder;
    use ferrotune_data::dataset::{self, Limits, ReadRecords, RecordSource, CHUNK_RECORDS};
    use ferrotune_data::pipeline::{self, DatasetReport};
    use ferrotune_data::records::{self, Coverage};
    use ferrotune_data::stream::PendingRecord;
    use ferrotune_data::{registry, Encoder};

    let dir = TempDir::new("stream-cache");
    let n = 2 * CHUNK_RECORDS + 1000;
    big_jsonl(&dir, n);

    // The whole-file path: every record read, then processed.
    let args = big_args(&dir, "unused");
    let (tokenizer, template) = pipeline::load_tokenizer_and_template(&args).unwrap();
    let spec = registry::resolve(&args.dataset, &args.dataset_dir, args.formatting)
        .unwrap()
        .pop()
        .unwrap();
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: template.as_ref(),
        options: args.encode_options(),
    };
    let read = records::read(&args, &spec, Coverage::AsTrained).unwrap();
    assert_eq!(read.skipped.len(), 1);
    let (mut whole, mut report, mut warnings) = (Vec::new(), DatasetReport::default(), Vec::new());
    dataset::process(
        &args,
        &spec,
        0,
        &encoder,
        &mut ReadRecords(read.into_records().into_iter()),
        &mut whole,
        Limits::default(),
        &mut report,
        &mut warnings,
    )
    .unwrap();
    assert_eq!(whole.len(), n);

    // Streamed into the cache, uninterrupted: the same examples.
    let straight = pipeline::prepare(&big_args(&dir, "straight"), None).unwrap();
    assert!(!straight.cache[0].hit);
    assert_eq!(fingerprint(&straight.samples), fingerprint(whole.clone()));
    assert_eq!(straight.reports[0].records, n);
    assert_eq!(straight.reports[0].invalid, 1);
    // Streamed without a cache: the same again.
    let mut no_cache = big_args(&dir, "none");
    no_cache.data_cache_dir = None;
    assert_eq!(
        fingerprint(&pipeline::prepare(&no_cache, None).unwrap().samples),
        fingerprint(whole.clone())
    );

    // Interrupted after one chunk (a source that fails, as a killed process stops), then
    // prepared again: it resumes, and the entry is the uninterrupted one, byte for byte.
    struct Failing(ferrotune_data::stream::RecordStream, usize);
    impl RecordSource for Failing {
        fn next_chunk(&mut self, n: usize) -> ferrotune_data::Result<Vec<PendingRecord>> {
            if self.1 == 0 {
                return Err(ferrotune_data::DataError::config("killed"));
            }
            self.1 -= 1;
            self.0.next_chunk(n)
        }
        fn position(&self) -> Option<&Position> {
            Some(self.0.position())
        }
    }
    let resumed_args = big_args(&dir, "resumed");
    let root = resumed_args.data_cache_dir.clone().unwrap();
    let key =
        ferrotune_data::cache::key(&resumed_args, &spec, &tokenizer, template.as_ref()).unwrap();
    let mut builder = EntryBuilder::open(&root, &key).unwrap().unwrap();
    let files = ferrotune_data::source::resolve_files(&spec.path).unwrap();
    let mut failing = Failing(RecordStream::open(files, Position::default()).unwrap(), 1);
    let (mut report, mut warnings) = (
        DatasetReport {
            name: spec.name.clone(),
            ..DatasetReport::default()
        },
        Vec::new(),
    );
    let e = dataset::process(
        &resumed_args,
        &spec,
        0,
        &encoder,
        &mut failing,
        &mut builder,
        Limits::default(),
        &mut report,
        &mut warnings,
    )
    .unwrap_err();
    assert!(e.to_string().contains("killed"));
    drop(builder);
    // The partial entry holds the first chunk, which the next run goes on from.
    let reopened = EntryBuilder::open(&root, &key).unwrap().unwrap();
    assert_eq!(reopened.progress().examples as usize, CHUNK_RECORDS);
    assert_eq!(reopened.progress().position.index, CHUNK_RECORDS);
    drop(reopened);
    let resumed = pipeline::prepare(&resumed_args, None).unwrap();
    assert!(!resumed.cache[0].hit);
    assert_eq!(
        entry_files(&resumed.cache[0].dir),
        entry_files(&straight.cache[0].dir)
    );
    assert_eq!(fingerprint(&resumed.samples), fingerprint(whole.clone()));
    assert_eq!(resumed.reports[0].lengths, straight.reports[0].lengths);
}
