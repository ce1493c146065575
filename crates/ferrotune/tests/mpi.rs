//! Data-parallel training over MPI (`mpirun -np 2 ferrotune train ...`) on a tiny model
//! made with `model init`: two processes of one thread give bit for bit what one process
//! of two threads gives, and stay within 1e-5 of one thread, for full, freeze and LoRA
//! tuning with and without packing; a killed rank ends the job, naming it, and the last
//! checkpoint resumes the run exactly.
//!
//! These need Open MPI (`mpirun`) and a ferrotune built with the `mpi` feature, which the
//! tests build themselves (`cargo build --features mpi`, into target/mpi). Without
//! `mpirun` they say so and pass, so that `cargo test` works on a machine with only the
//! Rust toolchain; `.ci/run` installs Open MPI and sets FERROTUNE_REQUIRE_MPI, which turns
//! a missing MPI into a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferrotune_testing::{cli, workspace_root, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

/// The `mpi` build of the binary, built once per test process; None when Open MPI is
/// missing (and not required).
fn mpi_binary() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let has_mpirun = Command::new("mpirun")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !has_mpirun {
                assert!(
                    std::env::var_os("FERROTUNE_REQUIRE_MPI").is_none(),
                    "FERROTUNE_REQUIRE_MPI is set but mpirun is missing: apt install libopenmpi-dev openmpi-bin libclang-dev"
                );
                eprintln!("skipped: Open MPI is not installed (apt install libopenmpi-dev openmpi-bin libclang-dev)");
                return None;
            }
            let target = workspace_root().join("target/mpi");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let o = Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "--features", "mpi", "-p", "ferrotune", "--bin", "ferrotune"])
                .arg("--target-dir")
                .arg(&target)
                .output()
                .expect("run cargo");
            assert!(
                o.status.success(),
                "cargo build --features mpi failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Some(target.join("debug/ferrotune"))
        })
        .clone()
}

/// `bin` with the settings every run here shares: offline, `threads` compute threads.
fn command(bin: &Path, threads: usize) -> Command {
    let mut c = cli::command(bin.to_str().unwrap());
    c.env("RAYON_NUM_THREADS", threads.to_string());
    c
}

/// `mpirun -np 2` of `bin`, one thread a process, as root where the tests run as root,
/// oversubscribed where slots are short, with shared memory's single-copy mechanism off
/// (containers forbid the process-to-process reads it uses).
fn mpirun(bin: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(workspace_root())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("HF_HUB_OFFLINE", "1")
        .args(["-np", "2", "--oversubscribe", "--bind-to", "none"])
        .args(["-x", "RAYON_NUM_THREADS=1", "-x", "HF_HUB_OFFLINE"])
        .arg(bin);
    c
}

/// `train CFG output_dir=OUT OVERRIDES...` by `launcher` (one process or mpirun); fails
/// the test, saying `what` ran, unless it succeeds.
fn train(
    mut launcher: Command,
    cfg: &Path,
    out: &Path,
    overrides: &[String],
    what: &str,
) -> Output {
    let o = launcher
        .arg("train")
        .arg(cfg)
        .arg(format!("output_dir={}", out.display()))
        .args(overrides)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn config(dir: &Path, model: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "model_name_or_path: {}\ndataset: identity_demo,tool_demo\ndataset_dir: examples/data\ncutoff_len: 128\n\
             placeholders: {{name: Ferro, author: the ferrotune project}}\n\
             gradient_accumulation_steps: 2\nlearning_rate: 2.0e-3\nlr_scheduler_type: constant\n\
             max_steps: 12\nlogging_steps: 1\nseed: 11\nreport_to: none\n\
             overwrite_output_dir: true\n{extra}",
            model.display()
        ),
    )
    .unwrap();
    path
}

/// (step, loss, gradient norm) of every logged step.
fn steps(output: &Path) -> Vec<(u64, f64, f64)> {
    ferrotune_testing::metrics(output, "loss")
        .into_iter()
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The trained weights (the adapter, or the whole model), by name.
fn weights(output: &Path) -> BTreeMap<String, Vec<f32>> {
    let file = ["adapter_model.safetensors", "model.safetensors"]
        .iter()
        .map(|f| output.join(f))
        .find(|p| p.is_file())
        .expect("trained weights");
    f32_tensors(&file)
}

/// Every tensor of an f32 safetensors file, by name.
fn f32_tensors(file: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
}

/// How far apart two weight sets are: the largest over tensors of |a - b| / |a| (L2).
/// Element by element would not do: AdamW divides each update by the root of its squared
/// gradients, so a weight whose gradient is rounding noise moves by up to the learning
/// rate either way, whichever order the noise was summed in.
fn weights_apart(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f64 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            let diff: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let norm: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum();
            (diff / norm.max(1e-60)).sqrt()
        })
        .fold(0f64, f64::max)
}

#[test]
fn two_processes_equal_two_threads_bit_for_bit() {
    let Some(mpi_bin) = mpi_binary() else { return };
    let tmp = TempDir::new("mpi-exact");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    for method in ["full", "freeze", "lora"] {
        for packing in [false, true] {
            let name = format!("{method}-{packing}");
            let cfg = config(
                tmp.path(),
                &model,
                &name,
                &format!("finetuning_type: {method}\npacking: {packing}\nfreeze_trainable_layers: 1\nsave_steps: 100000\n"),
            );
            let out = |run: &str| tmp.path().join(format!("{name}-{run}"));
            let batch = |rows: usize| [format!("per_device_train_batch_size={rows}")];
            // One process of two threads, and of one, each micro-batch 4 rows.
            for (run, threads) in [("threads2", 2), ("threads1", 1)] {
                train(
                    command(&mpi_bin, threads),
                    &cfg,
                    &out(run),
                    &batch(4),
                    &format!("{name} with {threads} thread(s)"),
                );
            }
            // Two processes of 2 rows each: the same global batch.
            let o = train(
                mpirun(&mpi_bin),
                &cfg,
                &out("mpi2"),
                &batch(2),
                &format!("{name} under mpirun -np 2"),
            );
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("x 2 processes = 8")
                    && err.contains("split over 2 processes x 1 thread"),
                "{name}: the plan line: {err}"
            );
            let (two, threads2, threads1) = (
                steps(&out("mpi2")),
                steps(&out("threads2")),
                steps(&out("threads1")),
            );
            assert_eq!(two.len(), 12, "{name}");
            assert_eq!(two, threads2, "{name}: per-step losses and gradient norms");
            assert_eq!(
                weights(&out("mpi2")),
                weights(&out("threads2")),
                "{name}: final weights"
            );
            for (a, b) in two.iter().zip(&threads1) {
                assert!(
                    relative(a.1, b.1) < 1e-5 && relative(a.2, b.2) < 1e-5,
                    "{name}: step {} against one thread: {a:?} {b:?}",
                    a.0
                );
            }
            let apart = weights_apart(&weights(&out("mpi2")), &weights(&out("threads1")));
            assert!(
                apart < 1e-5,
                "{name}: weights {apart:e} apart from one thread's"
            );
        }
    }
}

/// The pid of the ferrotune process of `rank` training into `output_dir`, found by its
/// command line and environment (Linux's /proc).
fn rank_pid(output_dir: &Path, rank: usize) -> Option<u32> {
    let needle = output_dir.display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let ours = args.first().is_some_and(|a| a.ends_with("ferrotune"))
            && args.get(1).is_some_and(|a| a == "train")
            && args.iter().any(|a| a.contains(&needle));
        if !ours {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
        if environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_the_checkpoint_resumes_it() {
    let Some(mpi_bin) = mpi_binary() else { return };
    let tmp = TempDir::new("mpi-kill");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let cfg = config(
        tmp.path(),
        &model,
        "kill",
        "finetuning_type: full\nper_device_train_batch_size: 2\nsave_steps: 4\n",
    );
    let straight = tmp.path().join("straight");
    train(
        mpirun(&mpi_bin),
        &cfg,
        &straight,
        &[],
        "the uninterrupted run",
    );
    // A long run (the learning rate is constant, so its first steps are the short run's),
    // killed once its first checkpoint is written.
    let broken = tmp.path().join("broken");
    let mut job = mpirun(&mpi_bin)
        .arg("train")
        .arg(&cfg)
        .arg(format!("output_dir={}", broken.display()))
        .arg("max_steps=100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let victim = loop {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before it could be killed"
        );
        if broken.join("checkpoint-4").is_dir() {
            if let Some(pid) = rank_pid(&broken, 1) {
                break pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = job.wait_with_output().unwrap();
    let took = killed.elapsed();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the job must fail: {said}");
    assert!(
        took < Duration::from_secs(60),
        "the job took {took:?} to end"
    );
    assert!(said.contains("rank 1"), "the dead rank is named: {said}");
    // Resumed on two processes from the last complete checkpoint, to the short run's end.
    let o = train(
        mpirun(&mpi_bin),
        &cfg,
        &broken,
        &["resume_from_checkpoint=auto".into()],
        "the resumed run",
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("resumed from"));
    let (a, b) = (steps(&straight), steps(&broken));
    assert_eq!(a.len(), 12);
    assert_eq!(
        a, b,
        "the resumed run's steps equal the uninterrupted run's"
    );
    assert_eq!(weights(&straight), weights(&broken));
    // The same checkpoint resumed by one process of two threads with the same global
    // batch (4 rows a micro-batch): the data position is global, so the same steps.
    let moved = tmp.path().join("moved");
    train(
        command(&mpi_bin, 2),
        &cfg,
        &moved,
        &[
            "per_device_train_batch_size=4".into(),
            format!(
                "resume_from_checkpoint={}",
                broken.join("checkpoint-4").display()
            ),
        ],
        "the checkpoint resumed on one process",
    );
    let later: Vec<_> = a.iter().filter(|s| s.0 > 4).cloned().collect();
    assert_eq!(steps(&moved), later, "resumed on one process");
    assert_eq!(weights(&straight), weights(&moved));
}

/// Evaluation and EWC's Fisher are split over the processes and added: the eval losses
/// equal one process's to rounding, and so does the Fisher (its sums are ordered
/// differently).
#[test]
fn evaluation_and_the_fisher_match_one_process() {
    let Some(mpi_bin) = mpi_binary() else { return };
    let tmp = TempDir::new("mpi-eval");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let cfg = config(
        tmp.path(),
        &model,
        "eval",
        "finetuning_type: lora\nval_size: 0.25\neval_strategy: steps\neval_steps: 4\n\
         per_device_eval_batch_size: 2\newc_lambda: 10.0\newc_dataset: identity_demo\n\
         ewc_samples: 24\nsave_steps: 100000\n",
    );
    let one = tmp.path().join("one");
    let two = tmp.path().join("two");
    train(
        command(&mpi_bin, 2),
        &cfg,
        &one,
        &["per_device_train_batch_size=4".into()],
        "one process",
    );
    train(
        mpirun(&mpi_bin),
        &cfg,
        &two,
        &["per_device_train_batch_size=2".into()],
        "two processes",
    );
    let evals = |dir: &Path| -> Vec<(u64, f64)> {
        ferrotune_testing::metrics(dir, "eval_loss")
            .into_iter()
            .map(|v| {
                (
                    v["step"].as_u64().unwrap(),
                    v["eval_loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (evals(&one), evals(&two));
    assert_eq!(
        a.len(),
        4,
        "before training, at steps 4 and 8, after the last: {a:?}"
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x.0 == y.0 && relative(x.1, y.1) < 1e-5, "{x:?} {y:?}");
    }
    let fisher = |dir: &Path| {
        let mut all = f32_tensors(&dir.join("ewc_fisher.safetensors"));
        all.retain(|name, _| name.starts_with("fisher."));
        all
    };
    let (f1, f2) = (fisher(&one), fisher(&two));
    assert!(!f1.is_empty());
    let apart = weights_apart(&f1, &f2);
    assert!(apart < 1e-6, "the Fisher estimates are {apart:e} apart");
}

/// DPO and KTO split over two processes compute what two threads compute, bit for bit:
/// the reference pass split over the processes, the pairs of each micro-batch sharded,
/// KTO's KL term estimated by every process on the whole micro-batch.
#[test]
fn preference_runs_split_over_processes_as_over_threads() {
    let Some(mpi_bin) = mpi_binary() else { return };
    let tmp = TempDir::new("mpi-preference");
    let model = cli::tiny_model(BIN, tmp.path(), true);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let demo: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(ferrotune_testing::shared("data/dpo_en_demo.json")).unwrap(),
    )
    .unwrap();
    let kto: Vec<serde_json::Value> = demo[..32]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut messages = r["conversations"].as_array().unwrap().clone();
            messages.push(r[if i % 3 == 0 { "rejected" } else { "chosen" }].clone());
            serde_json::json!({"messages": messages, "kto_tag": i % 3 != 0})
        })
        .collect();
    std::fs::write(
        data.join("pairs.json"),
        serde_json::Value::Array(demo).to_string(),
    )
    .unwrap();
    std::fs::write(
        data.join("kto.json"),
        serde_json::Value::Array(kto).to_string(),
    )
    .unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        r#"{"pairs": {"file_name": "pairs.json", "ranking": true, "formatting": "sharegpt",
              "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
            "kto": {"file_name": "kto.json", "formatting": "sharegpt",
              "columns": {"messages": "messages", "kto_tag": "kto_tag"}}}"#,
    )
    .unwrap();
    for (name, stage) in [
        ("dpo", "stage: dpo\ndataset: pairs\n"),
        ("kto", "stage: kto\ndataset: kto\n"),
    ] {
        let cfg = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "model_name_or_path: {}\n{stage}dataset_dir: {}\nmax_samples: 32\ncutoff_len: 64\n\
                 finetuning_type: lora\nlearning_rate: 1.0e-2\nlr_scheduler_type: constant\n\
                 gradient_accumulation_steps: 2\nmax_steps: 6\nlogging_steps: 1\nseed: 5\n\
                 val_size: 8\neval_strategy: steps\neval_steps: 3\nper_device_eval_batch_size: 2\n\
                 data_cache_dir: {}\nsave_steps: 100000\noverwrite_output_dir: true\n",
                model.display(),
                data.display(),
                tmp.path().join(format!("cache-{name}")).display()
            ),
        )
        .unwrap();
        let out = |run: &str| tmp.path().join(format!("{name}-{run}"));
        train(
            command(&mpi_bin, 2),
            &cfg,
            &out("threads2"),
            &["per_device_train_batch_size=4".into()],
            name,
        );
        train(
            mpirun(&mpi_bin),
            &cfg,
            &out("mpi2"),
            &["per_device_train_batch_size=2".into()],
            name,
        );
        let (two, threads) = (steps(&out("mpi2")), steps(&out("threads2")));
        assert_eq!(two.len(), 6, "{name}");
        assert_eq!(two, threads, "{name}: per-step losses and gradient norms");
        assert_eq!(
            weights(&out("mpi2")),
            weights(&out("threads2")),
            "{name}: final weights"
        );
        let evals = |dir: &Path| -> Vec<f64> {
            ferrotune_testing::metrics(dir, "eval_loss")
                .into_iter()
                .map(|v| v["eval_loss"].as_f64().unwrap())
                .collect()
        };
        let (a, b) = (evals(&out("threads2")), evals(&out("mpi2")));
        assert_eq!(
            a.len(),
            3,
            "{name}: before training, at step 3, after the last"
        );
        for (x, y) in a.iter().zip(&b) {
            assert!(relative(*x, *y) < 1e-6, "{name}: eval {x} against {y}");
        }
    }
}

/// A plain build refuses to run as one of several processes rather than train alone.
#[test]
fn a_build_without_mpi_refuses_a_launch_of_several() {
    let o = cli::command(BIN)
        .env("OMPI_COMM_WORLD_RANK", "0")
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .args(["train", "does-not-matter.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--features mpi") && err.contains("process 0 of 2"),
        "{err}"
    );
}
