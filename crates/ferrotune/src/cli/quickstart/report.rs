//! The quickstart's summary: what the files of the run say, in one short text
//! (OUT/summary.md, printed at the end) and as JSON (OUT/summary.json).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::files::{read_predictions, Recipe};
use super::PROBES;

pub struct Inputs<'a> {
    pub out: &'a Path,
    pub base: &'a Path,
    pub tiny: bool,
    pub recipe: &'a Recipe,
    /// (base, tuned) answer per probe of [`PROBES`].
    pub answers: &'a [(String, String)],
    pub timings: &'a [(String, f64)],
    pub total_seconds: f64,
    /// Why `export` failed, when it did.
    pub export_error: Option<&'a str>,
}

pub struct Summary {
    pub json: Value,
    pub text: String,
}

/// What `eval predict` wrote for one model on one set.
fn eval_set(dir: &Path, name: &str) -> Result<Value> {
    let path = dir.join("predict_results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let r: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", path.display()))?;
    let predictions = read_predictions(&dir.join("generated_predictions.jsonl"))?;
    let hits = predictions
        .iter()
        .filter(|p| p.predict.contains(name))
        .count();
    Ok(json!({
        "samples": predictions.len(),
        "name_hits": hits,
        "eval_loss": r["eval_loss"],
        "bleu4": r["predict_bleu-4"],
        "rouge_l": r["predict_rouge-l"],
    }))
}

/// The first and last train loss, and the first and last eval loss, of metrics.jsonl.
fn losses(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let records: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let series = |key: &str| -> Vec<f64> {
        records
            .iter()
            .filter_map(|r| r.get(key).and_then(Value::as_f64))
            .collect()
    };
    let (train, eval) = (series("loss"), series("eval_loss"));
    Ok(json!({
        "first_train_loss": train.first(),
        "last_train_loss": train.last(),
        "first_eval_loss": eval.first(),
        "last_eval_loss": eval.last(),
        "train_losses": train,
    }))
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn answer_line(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

impl Summary {
    pub fn collect(i: &Inputs) -> Result<Self> {
        let eval = i.out.join("eval");
        let name = &i.recipe.name;
        let set = |when: &str, which: &str| eval_set(&eval.join(when).join(which), name);
        let (id_before, id_after) = (set("before", "identity")?, set("after", "identity")?);
        let (gen_before, gen_after) = (set("before", "general")?, set("after", "general")?);
        let sft_dir = i.out.join("sft");
        let sft = losses(&sft_dir.join("metrics.jsonl"))?;
        let train_summary: Value = std::fs::read_to_string(sft_dir.join("train_summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let probes: Vec<Value> = PROBES
            .iter()
            .zip(i.answers)
            .map(|(p, (before, after))| {
                let expect = p.expect.unwrap_or(name);
                json!({
                    "prompt": p.prompt,
                    "expect": expect,
                    "base": before,
                    "tuned": after,
                    "pass": after.contains(expect),
                })
            })
            .collect();
        let timings: Vec<Value> = i
            .timings
            .iter()
            .map(|(s, t)| json!({"stage": s, "seconds": t}))
            .collect();
        let json = json!({
            "model": i.base.display().to_string(),
            "tiny": i.tiny,
            "name": name,
            "identity": {"before": id_before, "after": id_after},
            "general": {"before": gen_before, "after": gen_after},
            "sft": {
                "losses": sft,
                "steps": train_summary["steps"],
                "wall_seconds": train_summary["wall_seconds"],
                "peak_rss_mib": train_summary["peak_rss_mib"],
            },
            "probes": probes,
            "timings": timings,
            "total_seconds": i.total_seconds,
            "export": {
                "ok": i.export_error.is_none(),
                "error": i.export_error,
                "merged": i.out.join("merged").display().to_string(),
                "gguf": i.out.join("merged.gguf").display().to_string(),
            },
        });
        let text = render(&json, i.out);
        Ok(Summary { json, text })
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        let path = out.join("summary.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&self.json).expect("json") + "\n",
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        let mut md = self.text.clone();
        if let Ok(table) = std::fs::read_to_string(out.join("comparison.md")) {
            let _ = write!(
                md,
                "\n## BLEU / ROUGE (`eval compare`; general: against the base model's own answers)\n\n{table}"
            );
        }
        let path = out.join("summary.md");
        std::fs::write(&path, md).with_context(|| format!("cannot write {}", path.display()))
    }
}

fn render(j: &Value, out: &Path) -> String {
    let mut s = String::new();
    let name = j["name"].as_str().unwrap_or_default();
    let model = Path::new(j["model"].as_str().unwrap_or_default())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model = if j["tiny"].as_bool() == Some(true) {
        "the tiny model".to_string()
    } else {
        model
    };
    let _ = writeln!(s, "# ferrotune quickstart: {model} becomes {name}\n");
    let (ib, ia) = (&j["identity"]["before"], &j["identity"]["after"]);
    let (gb, ga) = (&j["general"]["before"], &j["general"]["after"]);
    let _ = writeln!(s, "| held-out evaluation | base | tuned |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| identity answers naming {name} | {}/{} | {}/{} |",
        ib["name_hits"], ib["samples"], ia["name_hits"], ia["samples"]
    );
    let _ = writeln!(
        s,
        "| identity eval loss | {} | {} |",
        num(&ib["eval_loss"], 4),
        num(&ia["eval_loss"], 4)
    );
    let _ = writeln!(
        s,
        "| identity BLEU-4 / ROUGE-L | {} / {} | {} / {} |",
        num(&ib["bleu4"], 1),
        num(&ib["rouge_l"], 1),
        num(&ia["bleu4"], 1),
        num(&ia["rouge_l"], 1)
    );
    let _ = writeln!(
        s,
        "| forgetting: eval loss on the base model's general answers | {} | {} |",
        num(&gb["eval_loss"], 4),
        num(&ga["eval_loss"], 4)
    );
    let _ = writeln!(
        s,
        "| forgetting: ROUGE-L against the base model's general answers | {} | {} |",
        num(&gb["rouge_l"], 1),
        num(&ga["rouge_l"], 1)
    );
    let sft = &j["sft"];
    let l = &sft["losses"];
    let _ = writeln!(
        s,
        "\nSFT: {} steps in {} s; train loss {} -> {}; eval loss (identity + general held out) {} -> {}",
        sft["steps"],
        num(&sft["wall_seconds"], 0),
        num(&l["first_train_loss"], 4),
        num(&l["last_train_loss"], 4),
        num(&l["first_eval_loss"], 4),
        num(&l["last_eval_loss"], 4)
    );
    let _ = writeln!(s, "\n## Chat probes (greedy)\n");
    for p in j["probes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "- {} {:?} should contain {:?}\n  - base:  {}\n  - tuned: {}",
            if p["pass"].as_bool() == Some(true) {
                "PASS"
            } else {
                "FAIL"
            },
            p["prompt"].as_str().unwrap_or_default(),
            p["expect"].as_str().unwrap_or_default(),
            answer_line(p["base"].as_str().unwrap_or_default()),
            answer_line(p["tuned"].as_str().unwrap_or_default()),
        );
    }
    if let Some(e) = j["export"]["error"].as_str() {
        let _ = writeln!(s, "\nEXPORT FAILED: {e}");
    }
    let _ = writeln!(s, "\n## Time per stage\n\n| stage | seconds |\n|---|---|");
    for t in j["timings"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} |",
            t["stage"].as_str().unwrap_or_default(),
            num(&t["seconds"], 1)
        );
    }
    let _ = writeln!(s, "| total | {} |", num(&j["total_seconds"], 1));
    let _ = writeln!(
        s,
        "\n## Files in {}\n\n\
         - summary.md, summary.json: this summary; comparison.md: the `eval compare` table\n\
         - configs/, data/: the recipe and the data (data/general_replay.json and \
         general_probe.json: the base model's own answers)\n\
         - sft/: the LoRA adapter, metrics.jsonl, loss.png, train_config.json, chat_template.jinja\n\
         - eval/{{before,after}}/{{identity,general}}/: generated_predictions.jsonl, predict_results.json\n\
         - merged/: the merged model (Hugging Face folder); merged.gguf: the same for llama.cpp\n\
         - commands.sh: every command the quickstart ran",
        out.display()
    );
    let talk = if j["export"]["ok"].as_bool() == Some(true) {
        "merged"
    } else {
        "sft"
    };
    let _ = writeln!(
        s,
        "\nTalk to it: ferrotune chat {}",
        out.join(talk).display()
    );
    s
}
