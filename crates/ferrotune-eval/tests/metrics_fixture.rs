//! The metrics against the Python packages' own numbers
//! (fixtures/metrics/bleu_rouge.json, made by make_fixtures.py; versions in MANIFEST.json).

use ferrotune_eval::{bleu, llamafactory, rouge};
use ferrotune_testing::{read_json, shared};
use serde_json::Value;

struct Fixture {
    pairs: Vec<(String, String)>,
    json: Value,
}

fn fixture() -> Fixture {
    let json = read_json(&shared("fixtures/metrics/bleu_rouge.json"));
    let pairs = json["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().expect(k).to_string();
            (s("prediction"), s("reference"))
        })
        .collect();
    Fixture { pairs, json }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn llamafactory_scores_match_per_sample_and_mean() {
    let f = fixture();
    let expected = f.json["llamafactory_style"]["per_sample"]
        .as_array()
        .unwrap();
    assert_eq!(expected.len(), f.pairs.len());
    let mut ours = Vec::new();
    let mut worst = [0.0f64; 4];
    for (i, ((pred, label), want)) in f.pairs.iter().zip(expected).enumerate() {
        let got = llamafactory::score(pred, label);
        let pairs = [
            ("bleu-4", got.bleu4),
            ("rouge-1", got.rouge1),
            ("rouge-2", got.rouge2),
            ("rouge-l", got.rouge_l),
        ];
        for (k, (key, value)) in pairs.iter().enumerate() {
            let diff = (value - num(&want[key])).abs();
            worst[k] = worst[k].max(diff);
            assert!(
                diff < 1e-9,
                "pair {i} {key}: ours {value}, Python {}",
                want[key]
            );
        }
        ours.push(got);
    }
    eprintln!("max |deviation| bleu-4, rouge-1, rouge-2, rouge-l: {worst:?}");
    let mean = llamafactory::mean(&ours);
    let want = &f.json["llamafactory_style"]["mean"];
    for (key, value) in [
        ("bleu-4", mean.bleu4),
        ("rouge-1", mean.rouge1),
        ("rouge-2", mean.rouge2),
        ("rouge-l", mean.rouge_l),
    ] {
        assert!(
            (value - num(&want[key])).abs() < 1e-9,
            "mean {key}: {value} vs {}",
            want[key]
        );
    }
}

#[test]
fn sacrebleu_corpus_bleu_matches_score_and_signature() {
    let f = fixture();
    let en = &f.pairs[..12];
    let got = bleu::corpus_bleu(en.iter().map(|(h, r)| (h.as_str(), r.as_str())));
    let want = &f.json["sacrebleu_corpus_bleu_en"];
    let diff = (got.score - num(&want["score"])).abs();
    eprintln!("sacrebleu score |deviation|: {diff:e}");
    assert!(diff < 1e-9, "{} vs {}", got.score, want["score"]);
    // "BLEU|<settings> = 63.42 91.3/87.1/... (BP = ... ref_len = 613)"
    let signature = want["signature"].as_str().unwrap();
    let verbose = signature.split_once(" = ").unwrap().1;
    assert_eq!(got.verbose(), verbose);
    assert_eq!((got.hyp_len, got.ref_len), (462, 613));
}

#[test]
fn rouge_score_matches_per_sample() {
    let f = fixture();
    let expected = f.json["rouge_score_en"]["per_sample"].as_array().unwrap();
    let mut worst = [0.0f64; 3];
    for (i, ((pred, label), want)) in f.pairs.iter().zip(expected).enumerate() {
        let got = rouge::rouge_score(pred, label);
        for (k, (key, value)) in [
            ("rouge1", got.rouge1),
            ("rouge2", got.rouge2),
            ("rougeL", got.rouge_l),
        ]
        .iter()
        .enumerate()
        {
            let diff = (value - num(&want[key])).abs();
            worst[k] = worst[k].max(diff);
            assert!(
                diff < 1e-12,
                "pair {i} {key}: ours {value}, Python {}",
                want[key]
            );
        }
    }
    eprintln!("max |deviation| rouge1, rouge2, rougeL: {worst:?}");
}

#[test]
fn jieba_words_match_python_on_the_fixture_chinese() {
    // Python: list(jieba.cut(...)) with jieba 0.42.1.
    let words = ferrotune_eval::segment::cut("输出： \"雷霆，公牛和网队：各显神通，角逐群雄!\"");
    assert_eq!(
        words,
        [
            "输出",
            "：",
            " ",
            "\"",
            "雷霆",
            "，",
            "公牛",
            "和",
            "网队",
            "：",
            "各显神通",
            "，",
            "角逐",
            "群雄",
            "!",
            "\""
        ]
    );
}
