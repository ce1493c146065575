//! Helpers shared by this crate's test binaries.

use ferrotune_data::DataArgs;
use ferrotune_testing::shared;

/// A demo set of ../shared/data with a shared tokenizer (and optionally a named template),
/// with the identity set's placeholders filled.
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
