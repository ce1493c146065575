//! Feeds arbitrary bytes through the record parsers: JSON and JSON Lines files, every
//! record format and stage, placeholder replacement, and rendering plus turn location with
//! a built-in chat template. Nothing may panic.
//!
//!     cargo +nightly fuzz run record_parsers -- -max_total_time=300
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use ferrotune_data::encode::locate_turns;
use ferrotune_data::format::{Formatting, RecordFormat, Stage};
use ferrotune_data::template::{builtin, ChatTemplate, SpecialTokens};
use ferrotune_data::{placeholders, Sample};
use libfuzzer_sys::fuzz_target;

fn template() -> &'static ChatTemplate {
    static TEMPLATE: OnceLock<ChatTemplate> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let specials = SpecialTokens {
            eos: Some("<|im_end|>".into()),
            all: vec!["<|im_start|>".into(), "<|im_end|>".into()],
            ..SpecialTokens::default()
        };
        let source = builtin::source("qwen").unwrap();
        ChatTemplate::new("qwen", &source, &specials, &Default::default(), Vec::new()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.json");
    let mut records = ferrotune_data::source::parse_jsonl(text, path).records;
    if let Ok(more) = ferrotune_data::source::parse_json(text, path) {
        records.extend(more);
    }
    let values = [("name".to_string(), "Ferro".to_string())].into_iter().collect();
    for raw in &records {
        for formatting in [None, Some(Formatting::Alpaca), Some(Formatting::Sharegpt), Some(Formatting::Openai), Some(Formatting::Text)] {
            let format = RecordFormat { formatting, ..RecordFormat::default() };
            for stage in [Stage::Sft, Stage::Pt] {
                match format.convert(raw, stage) {
                    Ok(Sample::Chat(mut c)) => {
                        c.map_text(|t| placeholders::replace(t, &values));
                        if let Ok(rendered) = template().render(&c.messages, &c.tools, false) {
                            let _ = locate_turns(template(), &c, &rendered);
                        }
                    }
                    Ok(Sample::Text(t)) => {
                        let _ = placeholders::unreplaced(&t);
                    }
                    Err(_) => {}
                }
            }
        }
    }
});
