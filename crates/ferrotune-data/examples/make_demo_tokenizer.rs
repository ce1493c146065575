//! Trains the small byte-level BPE tokenizer kept in examples/tokenizer, so the README's
//! demo runs without downloading anything:
//!
//!     cargo run -p ferrotune-data --example make_demo_tokenizer -- examples/data examples/tokenizer
//!
//! It learns merges from every text in the example datasets, adds ChatML special tokens
//! and writes tokenizer.json plus a tokenizer_config.json whose chat template is the
//! built-in `chatml` one with a neutral default system prompt.

use std::path::PathBuf;

use ferrotune_data::conversation::Sample;
use ferrotune_data::registry;
use ferrotune_data::source;
use ferrotune_data::Stage;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = PathBuf::from(
        args.next()
            .ok_or("usage: make_demo_tokenizer DATA_DIR OUT_DIR")?,
    );
    let out_dir = PathBuf::from(
        args.next()
            .ok_or("usage: make_demo_tokenizer DATA_DIR OUT_DIR")?,
    );

    // Every text of every dataset in the registry, one per line.
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        data_dir.join("dataset_info.json"),
    )?)?;
    let names: Vec<String> = info
        .as_object()
        .ok_or("bad dataset_info.json")?
        .keys()
        .cloned()
        .collect();
    let mut corpus = String::new();
    for spec in registry::resolve(&names, &data_dir, None)? {
        for file in source::resolve_files(&spec.path)? {
            for raw in source::read_file(&file)?.records {
                if let Sample::Chat(c) = spec.format.convert(&raw, Stage::Sft)? {
                    for text in c.texts() {
                        corpus.push_str(text);
                        corpus.push('\n');
                    }
                }
            }
        }
    }
    std::fs::create_dir_all(&out_dir)?;
    let corpus_path = std::env::temp_dir().join("ferrotune-demo-tokenizer-corpus.txt");
    std::fs::write(&corpus_path, &corpus)?;

    let trainer = BpeTrainerBuilder::new()
        .vocab_size(1024)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, false, true)));
    let mut trainer_wrapper: tokenizers::models::TrainerWrapper = trainer.into();
    tokenizer
        .train_from_files(
            &mut trainer_wrapper,
            vec![corpus_path.to_string_lossy().into_owned()],
        )
        .map_err(|e| format!("training failed: {e}"))?;
    tokenizer
        .save(out_dir.join("tokenizer.json"), true)
        .map_err(|e| format!("cannot save: {e}"))?;

    let chat_template = ferrotune_data::template::builtin::source("chatml")
        .ok_or("no chatml template")?
        .replacen(
            "set default_system = ''",
            "set default_system = 'You are a helpful AI assistant.'",
            1,
        );
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": false,
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": 2048,
        "chat_template": chat_template,
    });
    std::fs::write(
        out_dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    println!(
        "wrote {} (vocabulary {}) from {} bytes of text",
        out_dir.display(),
        tokenizer.get_vocab_size(true),
        corpus.len()
    );
    Ok(())
}
