//! The fast data path against the reference one, sample by sample: ids, labels and weights
//! from the native template rendering and the fast BPE encoder must equal those from the
//! jinja template and the tokenizers crate, on every SFT demo set of ../shared/data, with
//! the Qwen3 tokenizer's own template and the built-in `qwen3`. (Its own test binary: the
//! reference tokenizer is loaded under `FERROTUNE_HF_TOKENIZER`, a process-wide variable.)

use ferrotune_data::encode::Encoder;
use ferrotune_data::pipeline;
use ferrotune_data::quality::load;
use ferrotune_data::{ChatTemplate, DataArgs, TokenizerBundle};
use ferrotune_testing::shared;

mod common;

fn args(dataset: &str, template: Option<&str>) -> DataArgs {
    common::shared_args("qwen3", dataset, template)
}

#[test]
fn fast_and_reference_paths_give_the_same_examples() {
    let reference_tokenizer = {
        std::env::set_var("FERROTUNE_HF_TOKENIZER", "1");
        let t = TokenizerBundle::load(&shared("tokenizers/qwen3")).unwrap();
        std::env::remove_var("FERROTUNE_HF_TOKENIZER");
        t
    };
    assert!(reference_tokenizer.fast_encoder().is_none());
    let mut compared = 0;
    for template in [None, Some("qwen3")] {
        for dataset in [
            "alpaca_en_demo.json",
            "alpaca_zh_demo.json",
            "identity.json",
            "glaive_toolcall_en_demo.json",
        ] {
            let args = args(dataset, template);
            let (tokenizer, chat) = pipeline::load_tokenizer_and_template(&args).unwrap();
            let chat = chat.unwrap();
            assert!(tokenizer.fast_encoder().is_some());
            assert!(chat.has_native(), "{template:?}");
            let jinja = ChatTemplate::choose(
                &args.template_choice(),
                tokenizer.chat_template.as_deref(),
                &args.custom_templates,
                &tokenizer.specials,
                &args.template_kwargs(),
            )
            .unwrap()
            .without_native();
            let fast = Encoder {
                tokenizer: &tokenizer,
                template: Some(&chat),
                options: args.encode_options(),
            };
            let reference = Encoder {
                tokenizer: &reference_tokenizer,
                template: Some(&jinja),
                options: args.encode_options(),
            };
            for dataset in load::load(&args).unwrap() {
                for record in &dataset.records {
                    let sample = record.sample.as_ref().unwrap();
                    assert_eq!(
                        fast.encode(sample),
                        reference.encode(sample),
                        "{} ({template:?})",
                        record.at
                    );
                    compared += 1;
                }
            }
            // The fast path never needed the tokenizers crate: preparing data loads one
            // tokenizer, not two.
            assert!(!tokenizer.hf_is_loaded());
            assert!(tokenizer.pad_token().id > 0);
            assert!(!tokenizer.hf_is_loaded());
        }
    }
    assert_eq!(compared, 2 * (999 + 1000 + 91 + 300));
}
