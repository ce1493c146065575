//! Tokenizer throughput alone, on one thread: the tokenizers crate's `encode(text, false)`
//! against the fast byte-level BPE encoder, on the texts the pipeline tokenizes (every
//! record rendered through the tokenizer's own chat template).
//!
//! ```sh
//! cargo run -p ferrotune-data --example fastbpe_bench -- ../shared/tokenizers/qwen3 \
//!     ../shared/data/alpaca_en_demo.json ../shared/data/alpaca_zh_demo.json
//! ```
//!
//! Each encoder runs `--passes` times over all texts (default 3); the first fast pass
//! starts with an empty piece cache. Ids are checked to be identical.

use std::path::PathBuf;
use std::time::Instant;

use ferrotune_data::conversation::Sample;
use ferrotune_data::source;
use ferrotune_data::template::{ChatTemplate, TemplateChoice};
use ferrotune_data::{RecordFormat, Stage, TokenizerBundle};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut passes = 3;
    if let Some(i) = args.iter().position(|a| a == "--passes") {
        passes = args[i + 1].parse().expect("--passes N");
        args.drain(i..i + 2);
    }
    let (dir, datasets) = args
        .split_first()
        .expect("usage: fastbpe_bench TOKENIZER_DIR DATASET... [--passes N]");
    let started = Instant::now();
    let bundle = TokenizerBundle::load(&PathBuf::from(dir)).expect("tokenizer");
    println!(
        "tokenizer loaded in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let fast = bundle
        .fast_encoder()
        .expect("the fast path does not apply to this tokenizer");
    let template = ChatTemplate::choose(
        &TemplateChoice::Tokenizer,
        bundle.chat_template.as_deref(),
        &Default::default(),
        &bundle.specials,
        &Default::default(),
    )
    .expect("template");
    let mut texts = Vec::new();
    for path in datasets {
        let read = source::read_file(&PathBuf::from(path)).expect("dataset");
        for raw in &read.records {
            if let Ok(Sample::Chat(c)) = RecordFormat::default().convert(raw, Stage::Sft) {
                if let Ok(text) = template.render(&c.messages, &c.tools, false) {
                    texts.push(text);
                }
            }
        }
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    println!("{} texts, {:.1} MB", texts.len(), bytes as f64 / 1e6);

    for pass in 0..passes {
        let started = Instant::now();
        let mut tokens = 0;
        for text in &texts {
            let e = bundle.hf().unwrap().encode(text.as_str(), false).unwrap();
            tokens += e.len();
        }
        report("tokenizers crate", pass, tokens, started);
    }
    for pass in 0..passes {
        let started = Instant::now();
        let mut tokens = 0;
        for text in &texts {
            let (ids, _) = fast.encode(text).expect("fast path");
            tokens += ids.len();
        }
        report("fastbpe", pass, tokens, started);
    }
    for text in &texts {
        let e = bundle.hf().unwrap().encode(text.as_str(), false).unwrap();
        assert_eq!(fast.encode(text).unwrap().0, e.get_ids());
    }
    println!("ids identical on all texts");
}

fn report(what: &str, pass: usize, tokens: usize, started: Instant) {
    let s = started.elapsed().as_secs_f64();
    println!(
        "{what:>16} pass {pass}: {tokens} tokens in {s:.3} s: {:.2} M tokens/s",
        tokens as f64 / s / 1e6
    );
}
