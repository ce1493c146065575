//! Parquet, the format Hugging Face datasets are stored in, read through the same path.
#![cfg(feature = "parquet")]

use std::sync::Arc;

use ferrotune_data::source;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

fn write_alpaca_parquet(path: &std::path::Path, rows: &[(&str, &str)]) {
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY instruction (UTF8); REQUIRED BYTE_ARRAY output (UTF8); }",
        )
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for column in 0..2 {
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows
            .iter()
            .map(|r| ByteArray::from(if column == 0 { r.0 } else { r.1 }))
            .collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_rows_become_records_and_samples() {
    let dir = ferrotune_testing::TempDir::new("parquet");
    let path = dir.path().join("train-00000-of-00001.parquet");
    write_alpaca_parquet(
        &path,
        &[
            ("Who are you?", "I am Ferro."),
            ("你是谁？", "我是 Ferro。"),
        ],
    );
    let read = source::read_file(&path).unwrap();
    assert!(read.errors.is_empty());
    assert_eq!(read.records.len(), 2);
    assert_eq!(read.records[1].value["instruction"], "你是谁？");
    assert_eq!(
        read.records[1].at.to_string(),
        format!("{} record 1", path.display())
    );

    // A folder of shards resolves to its data files.
    let files = source::resolve_files(dir.path()).unwrap();
    assert_eq!(files, vec![path.clone()]);
    let args = ferrotune_data::DataArgs {
        model_name_or_path: Some(ferrotune_testing::workspace_root().join("examples/tokenizer")),
        dataset: vec![dir.path().join("*.parquet").display().to_string()],
        ..Default::default()
    };
    let p = ferrotune_data::pipeline::prepare(&args, None).unwrap();
    assert_eq!(p.reports[0].samples, 2);
}

#[test]
fn a_file_that_is_not_parquet_is_a_clear_error() {
    let dir = ferrotune_testing::TempDir::new("not-parquet");
    let path = dir.write("data.parquet", "this is not parquet");
    let e = source::read_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("data.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
}
