//! Helpers shared by this crate's test binaries.

use ferrotune_data::pipeline::PreparedSample;
use ferrotune_data::DataArgs;
use ferrotune_testing::shared;

/// What a run trains on, example by example: ids, labels, truncated, where it came from.
pub type Fingerprint = Vec<(Vec<u32>, Vec<i64>, bool, String)>;

#[allow(dead_code)] // Not every test binary compares examples.
pub fn fingerprint(samples: impl IntoIterator<Item = PreparedSample>) -> Fingerprint {
    samples
        .into_iter()
        .map(|s| {
            let e = s.encoded;
            (e.input_ids, e.labels, e.truncated, s.at.to_string())
        })
        .collect()
}

/// A demo set of ../shared/data with a shared tokenizer (and optionally a named template),
/// with the identity set's placeholders filled.
#[allow(dead_code)] // Not every test binary reads the shared demo sets.
pub fn shared_args(tokenizer: &str, dataset: &str, template: Option<&str>) -> DataArgs {
    let mut args = DataArgs {
        tokenizer_name_or_path: Some(shared(&format!("tokenizers/{tokenizer}"))),
        dataset: vec![shared(&format!("data/{dataset}")).display().to_string()],
        dataset_dir: shared("data"),
        template: template.map(String::from),
        ..DataArgs::default()
    };
    args.placeholders.insert("name".into(), "Ferro".into());
    args.placeholders
        .insert("author".into(), "the ferrotune project".into());
    args
}
