//! The fast byte-level BPE encoder against the tokenizers crate: ids AND byte offsets
//! identical on every text of the shared demo data (raw fields, chat renderings, C4
//! documents), the template fixtures and hand-written edge cases, for the real Qwen3 and
//! Llama 3 tokenizers and examples/tokenizer; variants of their tokenizer.json that it
//! must still reproduce; and tokenizers it must refuse.

use std::path::{Path, PathBuf};

use ferrotune_data::conversation::Sample;
use ferrotune_data::fastbpe::FastBpe;
use ferrotune_data::source;
use ferrotune_data::template::{ChatTemplate, TemplateChoice};
use ferrotune_data::{RecordFormat, Stage, TokenizerBundle};
use ferrotune_testing::{read_json, shared, workspace_root};
use serde_json::{json, Value};
use tokenizers::{NormalizedString, Normalizer, Tokenizer};

const DATASETS: &[&str] = &[
    "alpaca_en_demo.json",
    "alpaca_zh_demo.json",
    "identity.json",
    "glaive_toolcall_en_demo.json",
];

fn tokenizer_dirs() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("qwen3", shared("tokenizers/qwen3")),
        ("llama3", shared("tokenizers/llama3")),
        ("example", workspace_root().join("examples/tokenizer")),
    ]
}

fn load(dir: &Path) -> (String, Tokenizer) {
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let hf: Tokenizer = json.parse().unwrap();
    (json, hf)
}

/// Hand-written texts at the edges of the split patterns, BPE and added tokens.
fn edge_cases() -> Vec<String> {
    let mut cases: Vec<String> = [
        "",
        " ",
        "  ",
        "   ",
        "a",
        "hello world",
        "hello  world",
        "hello   world",
        "hello    world.",
        "  leading spaces",
        "trailing space ",
        "trailing spaces   ",
        "x \n",
        "a\r\nb",
        "a\r\n\r\nb",
        "line\r\n",
        " \r\n",
        "\n\n\n",
        " \n \n ",
        "a \n\n b",
        "\t\tindented",
        "tab\t \tmix",
        "def f(x):\n    if x:\n        return 1\n    return 0\n",
        "1234567",
        "12 345 6789 1234567890",
        "  123",
        "x  42",
        "3.14159, 2,718 and 1e10",
        "   !!!",
        "x  ,y",
        "wait...   what?!",
        "I'M HERE, YOU'LL SEE, WE'VE DONE IT, HE'D, SHE'S, IT'S, DON'T, THEY'RE",
        "don't 'tis 'S 'ſ 'K ’s",
        "  'll  've",
        "中文测试，你好！这是一个句子。",
        "日本語のテキストです。",
        "한국어 텍스트",
        "Ελληνικά русский עברית العربية हिन्दी ไทย",
        "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
        "😀😀😀",
        "composed é vs combining e\u{301}",
        "a\u{301}\u{302} and \u{301}start",
        "NBSP\u{a0}here and\u{a0}\u{a0}twice",
        "ideographic\u{3000}\u{3000}space",
        "em\u{2003}\u{2003}space x",
        "\u{85}next line\u{2028}separator",
        "zero\u{200d}width\u{200b}space",
        "controls \u{0}\u{1}\u{b}\u{c} here",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "text<|im_end|>more",
        "  <|im_end|>  ",
        "<|endoftext|><|endoftext|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "<think>\n\n</think>\n\nanswer",
        "a<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>b",
        "<|im_end|",
        "<<|im_end|>>",
        "email@example.com https://example.com/a?b=c&d=e#f",
        "C++ and C# and F#; x+=1; y-->0; a||b && c!=d",
        "$100.00 (50%) — “quoted” ‘single’ «guillemets»",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cases.push(format!("{}x", " ".repeat(300)));
    cases.push(format!("x{}", " ".repeat(300)));
    cases.push("=".repeat(500));
    cases.push("ab".repeat(200));
    cases.push(format!("{}x", "\n".repeat(100)));
    cases.push("9".repeat(100));
    cases.push("😀".repeat(50));
    cases.push("的".repeat(120));
    cases.push(format!("{}{}", "\t".repeat(70), "end"));
    cases.push("- ".repeat(100));
    cases
}

/// Every string inside a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The texts of the shared data: every string field, each record rendered through the
/// tokenizer's chat template (when it has one), the C4 documents and the fixture texts.
fn corpus(bundle: &TokenizerBundle) -> Vec<String> {
    let mut texts = Vec::new();
    let template = bundle.chat_template.as_deref().map(|own| {
        ChatTemplate::choose(
            &TemplateChoice::Tokenizer,
            Some(own),
            &Default::default(),
            &bundle.specials,
            &Default::default(),
        )
        .unwrap()
    });
    let format = RecordFormat::default();
    for name in DATASETS {
        let read = source::read_file(&shared(&format!("data/{name}"))).unwrap();
        assert!(read.errors.is_empty());
        for raw in &read.records {
            strings(&raw.value, &mut texts);
            let Some(template) = &template else { continue };
            if let Ok(Sample::Chat(c)) = format.convert(raw, Stage::Sft) {
                if let Ok(text) = template.render(&c.messages, &c.tools, false) {
                    texts.push(text);
                }
            }
        }
    }
    let c4 = source::read_file(&shared("data/c4_demo.jsonl")).unwrap();
    for raw in &c4.records {
        texts.push(raw.value["text"].as_str().unwrap().to_string());
    }
    let fixtures = read_json(&shared("fixtures/templates/chat_templates.json"));
    for section in fixtures.as_object().unwrap().values() {
        for case in section["chat_template_cases"].as_array().unwrap() {
            for key in ["text", "generation_prompt_text"] {
                texts.push(case[key].as_str().unwrap().to_string());
            }
        }
        for case in section["plain_encoding_cases"].as_array().unwrap() {
            texts.push(case["text"].as_str().unwrap().to_string());
        }
    }
    texts
}

fn is_normalized(hf: &Tokenizer, text: &str) -> bool {
    let Some(n) = hf.get_normalizer() else {
        return true;
    };
    let mut ns = NormalizedString::from(text);
    n.normalize(&mut ns).unwrap();
    ns.get() == text
}

/// Compares every text; returns how many were left to the tokenizers crate (each of which
/// must be a text the normalizer changes).
fn check_texts(what: &str, fast: &FastBpe, hf: &Tokenizer, texts: &[String]) -> usize {
    check_texts_twice(what, fast, hf, texts, false)
}

/// With `twice`, each text is encoded a second time, from the piece cache.
fn check_texts_twice(
    what: &str,
    fast: &FastBpe,
    hf: &Tokenizer,
    texts: &[String],
    twice: bool,
) -> usize {
    let mut fallbacks = 0;
    for (i, text) in texts.iter().enumerate() {
        let reference = hf.encode(text.as_str(), false).unwrap();
        if twice {
            assert_eq!(fast.encode(text), fast.encode(text), "{what}: text {i}");
        }
        match fast.encode(text) {
            Some((ids, offsets)) => {
                assert_eq!(
                    ids,
                    reference.get_ids(),
                    "{what}: ids differ on text {i}: {text:?}"
                );
                assert_eq!(
                    offsets,
                    reference.get_offsets(),
                    "{what}: offsets differ on text {i}: {text:?}"
                );
            }
            None => {
                assert!(
                    !is_normalized(hf, text),
                    "{what}: text {i} fell back although it is normalized: {text:?}"
                );
                fallbacks += 1;
            }
        }
    }
    fallbacks
}

#[test]
fn identical_to_the_tokenizers_crate_on_the_shared_data_and_edge_cases() {
    for (name, dir) in tokenizer_dirs() {
        let (json, hf) = load(&dir);
        let fast = FastBpe::from_json(&json)
            .unwrap_or_else(|e| panic!("{name}: the fast path should apply: {e}"));
        let bundle = TokenizerBundle::load(&dir).unwrap();
        let mut texts = corpus(&bundle);
        let corpus_len = texts.len();
        assert!(corpus_len > 8000, "{name}: only {corpus_len} texts");
        texts.extend(edge_cases());
        // Each text twice: the second time reads the piece cache.
        let fallbacks = check_texts_twice(name, &fast, &hf, &texts, true);
        // Only the combining-mark edge cases are not NFC.
        assert!(fallbacks <= 2, "{name}: {fallbacks} texts fell back");
        eprintln!(
            "{name}: {} texts identical, {fallbacks} not NFC and left to the tokenizers crate",
            texts.len() - fallbacks
        );
        // The bundle uses the fast path and gives the same as the tokenizers crate.
        assert!(bundle.fast_encoder().is_some(), "{name}");
        for text in texts.iter().step_by(97) {
            let (ids, offsets) = bundle.encode_with_offsets(text).unwrap();
            let reference = hf.encode(text.as_str(), false).unwrap();
            assert_eq!(ids, reference.get_ids());
            assert_eq!(offsets, reference.get_offsets());
        }
        // Texts the fast path leaves to the tokenizers crate come out right too: one that
        // is not NFC (under Qwen's normalizer), and a run of spaces so long that
        // fancy-regex gives up splitting after it (there the two would differ).
        let huge = format!("a{}b c", " ".repeat(1_200_000));
        assert!(fast.encode(&huge).is_none(), "{name}");
        for odd in ["cafe\u{301} e\u{301}", huge.as_str()] {
            let (ids, offsets) = bundle.encode_with_offsets(odd).unwrap();
            let reference = hf.encode(odd, false).unwrap();
            assert_eq!(ids, reference.get_ids(), "{name}");
            assert_eq!(offsets, reference.get_offsets(), "{name}");
        }
    }
}

#[test]
fn offsets_of_partial_characters_span_the_whole_character() {
    // Rare four-byte characters are several byte-level tokens each: every one of them
    // covers its whole character, as in the tokenizers crate.
    let (json, hf) = load(&shared("tokenizers/qwen3"));
    let fast = FastBpe::from_json(&json).unwrap();
    let text = "a\u{13000}\u{1D518}\u{2000B}b";
    let (ids, offsets) = fast.encode(text).unwrap();
    let reference = hf.encode(text, false).unwrap();
    assert_eq!(ids, reference.get_ids());
    assert_eq!(offsets, reference.get_offsets());
    assert!(ids.len() > text.chars().count(), "{offsets:?}");
    for (start, end) in offsets {
        assert!(text.is_char_boundary(start) && text.is_char_boundary(end));
    }
}

/// The qwen3 tokenizer.json, changed by `edit`.
fn qwen3_variant(edit: impl FnOnce(&mut Value)) -> (String, Tokenizer) {
    let (json, _) = load(&shared("tokenizers/qwen3"));
    let mut v: Value = serde_json::from_str(&json).unwrap();
    edit(&mut v);
    let json = v.to_string();
    let hf: Tokenizer = json.parse().unwrap();
    (json, hf)
}

fn variant_texts() -> Vec<String> {
    let mut texts = edge_cases();
    texts.extend(
        [
            "x <|im_end|> y",
            "x  <|im_end|>\n\n y",
            "word<|im_end|>word",
            " <tool_call> call </tool_call> ",
            "mytool_call <tool_call>x",
            "a<|fim_pad|>b <|fim_pad|> c",
            "hello ferrotune world, ferrotune!",
            "theferrotune ferrotunes",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    texts
}

#[test]
fn variants_of_the_file_are_reproduced() {
    let texts = variant_texts();
    // Added tokens with lstrip / rstrip / single_word, and a normalized added token that is
    // not in the file (appended by the tokenizers crate).
    let (json, hf) = qwen3_variant(|v| {
        for t in v["added_tokens"].as_array_mut().unwrap() {
            match t["content"].as_str().unwrap() {
                "<|im_end|>" => {
                    t["lstrip"] = json!(true);
                    t["rstrip"] = json!(true);
                }
                "<tool_call>" | "</tool_call>" => t["single_word"] = json!(true),
                "<|fim_pad|>" => {
                    t["lstrip"] = json!(true);
                    t["normalized"] = json!(true);
                }
                _ => {}
            }
        }
        let next = 151_700;
        v["added_tokens"].as_array_mut().unwrap().push(json!({
            "id": next, "content": "ferrotune", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": false
        }));
    });
    let fast = FastBpe::from_json(&json).unwrap();
    check_texts("qwen3 added-token flags", &fast, &hf, &texts);

    // Two successive splits: Qwen's pattern, then GPT-2's (ByteLevel with use_regex).
    let (json, hf) = qwen3_variant(|v| {
        v["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = json!(true);
    });
    let fast = FastBpe::from_json(&json).unwrap();
    check_texts("qwen3 two splits", &fast, &hf, &texts);

    // GPT-2 style: ByteLevel alone, no normalizer, offsets trimmed by the post-processor
    // (with and without its add_prefix_space).
    for add_prefix_space in [false, true] {
        let (json, hf) = qwen3_variant(|v| {
            v["normalizer"] = Value::Null;
            v["pre_tokenizer"] = json!({"type": "ByteLevel", "add_prefix_space": false,
                "trim_offsets": true, "use_regex": true});
            v["post_processor"] = json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
                "trim_offsets": true, "use_regex": true});
        });
        let fast = FastBpe::from_json(&json).unwrap();
        let fallbacks = check_texts("gpt2 style, trimmed offsets", &fast, &hf, &texts);
        assert_eq!(fallbacks, 0);
    }

    // Llama 3's post-processor in the Meta file: ByteLevel then TemplateProcessing (which
    // adds BOS only with special tokens).
    let (json, _) = load(&shared("tokenizers/llama3"));
    let mut v: Value = serde_json::from_str(&json).unwrap();
    v["post_processor"] = json!({"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
             "ids": [128000], "tokens": ["<|begin_of_text|>"]}}}
    ]});
    let json = v.to_string();
    let hf: Tokenizer = json.parse().unwrap();
    let fast = FastBpe::from_json(&json).unwrap();
    check_texts("llama3 with TemplateProcessing", &fast, &hf, &texts);
}

#[test]
fn unsupported_tokenizers_are_refused() {
    // A WordPiece tokenizer.
    let wordpiece = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1, "##b": 2}}
    })
    .to_string();
    assert!(FastBpe::new(&wordpiece).is_none());

    let refused = |what: &str, edit: &dyn Fn(&mut Value)| {
        let (json, _) = qwen3_variant(edit);
        assert!(FastBpe::new(&json).is_none(), "{what} was accepted");
        let err = FastBpe::from_json(&json).unwrap_err();
        assert!(!err.is_empty());
    };
    refused("Metaspace", &|v| {
        v["pre_tokenizer"] = json!({"type": "Metaspace", "replacement": "▁",
            "prepend_scheme": "always", "split": true});
    });
    refused("another look-ahead", &|v| {
        v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] =
            json!(r"\p{L}+(?=\s)|\p{N}|\s+(?!\S)|\s+");
    });
    refused("a Removed split", &|v| {
        v["pre_tokenizer"]["pretokenizers"][0]["behavior"] = json!("Removed");
    });
    refused("add_prefix_space", &|v| {
        v["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = json!(true);
    });
    refused("NFKC", &|v| v["normalizer"] = json!({"type": "NFKC"}));
    refused("byte_fallback", &|v| {
        v["model"]["byte_fallback"] = json!(true)
    });
    refused("dropout", &|v| v["model"]["dropout"] = json!(0.1));
    refused("truncation", &|v| {
        v["truncation"] =
            json!({"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0});
    });
    refused("RobertaProcessing", &|v| {
        v["post_processor"] = json!({"type": "RobertaProcessing", "sep": ["</s>", 2],
            "cls": ["<s>", 0], "trim_offsets": true, "add_prefix_space": false});
    });
}

#[test]
fn llama3_takes_vocabulary_pieces_whole() {
    // `ignore_merges`: a piece that is itself a token is taken whole even where the merges
    // would not build it. Find the Llama 3 tokens where that matters (the tokenizers crate
    // with and without the flag disagrees) and check the fast encoder on them.
    let (json, hf) = load(&shared("tokenizers/llama3"));
    let mut v: Value = serde_json::from_str(&json).unwrap();
    v["model"]["ignore_merges"] = json!(false);
    let merged_only: Tokenizer = v.to_string().parse().unwrap();
    let fast = FastBpe::from_json(&json).unwrap();
    let mut texts = Vec::new();
    for id in 0..128_000u32 {
        let text = hf.decode(&[id], false).unwrap();
        if text.is_empty() || text.contains('\u{FFFD}') {
            continue;
        }
        let whole = hf.encode(text.as_str(), false).unwrap();
        let merged = merged_only.encode(text.as_str(), false).unwrap();
        if whole.get_ids() != merged.get_ids() {
            texts.push(text);
        }
    }
    assert!(
        !texts.is_empty(),
        "no Llama 3 token depends on ignore_merges"
    );
    eprintln!(
        "{} Llama 3 tokens depend on ignore_merges, e.g. {:?}",
        texts.len(),
        &texts[..texts.len().min(5)]
    );
    assert_eq!(check_texts("llama3 ignore_merges", &fast, &hf, &texts), 0);
}
