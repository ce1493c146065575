//! A misspelt value of a choice key fails when the config is read, before any data or
//! model is: the error names the key, the value and the accepted values, and nothing about
//! the model or the data (which here do not exist).

use ferrotune_testing::TempDir;
use ferrotune_train::config::file::ConfigFile;
use ferrotune_train::recipe::Run;

/// Each choice key with a misspelt value and the accepted values its error must list.
const MISSPELT: &[(&str, &str, &str)] = &[
    ("finetuning_type", "loar", "full, lora, freeze"),
    (
        "lr_scheduler_type",
        "cosine_restarts",
        "constant, constant_with_warmup, linear, cosine, cosine_with_min_lr",
    ),
    ("save_strategy", "best", "no, steps, epoch"),
    ("eval_strategy", "stpes", "no, steps, epoch"),
];

fn config_with(tmp: &TempDir, key: &str, value: &str) -> ConfigFile {
    let path = tmp.write(
        &format!("{key}.yaml"),
        format!(
            "model_name_or_path: {model}\ndataset: no_such_dataset\ndataset_dir: {data}\n\
             output_dir: {out}\n{key}: {value}\n",
            model = tmp.path().join("no-such-model").display(),
            data = tmp.path().join("no-such-data").display(),
            out = tmp.path().join("out").display(),
        ),
    );
    ConfigFile::load(&path).unwrap()
}

#[test]
fn a_misspelt_choice_fails_before_data_or_model_naming_key_value_and_choices() {
    let tmp = TempDir::new("choices");
    for &(key, value, accepted) in MISSPELT {
        let config = config_with(&tmp, key, value);
        let Err(e) = Run::from_config(&config) else {
            panic!("{key}: {value} was accepted");
        };
        let e = e.to_string();
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        assert!(e.contains(&format!("{value:?}")), "{key}: {e}");
        assert!(
            e.contains(&format!("accepted values: {accepted}")),
            "{key}: {e}"
        );
        assert!(
            !e.contains("no-such-model") && !e.contains("no_such_dataset"),
            "{key}: {e}"
        );
        assert!(!tmp.path().join("out").exists(), "{key}: output created");
    }
}

#[test]
fn every_accepted_spelling_reads() {
    let tmp = TempDir::new("choices-ok");
    for (key, value) in [
        ("finetuning_type", "freeze"),
        ("lr_scheduler_type", "constant_with_warmup"),
        ("save_strategy", "epoch"),
        ("eval_strategy", "no"),
    ] {
        let run = Run::from_config(&config_with(&tmp, key, value)).unwrap();
        assert_eq!(run.resolved[key], value, "{key}");
    }
}
