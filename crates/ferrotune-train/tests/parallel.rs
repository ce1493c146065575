//! Data parallelism over threads changes no loss and no gradient: a micro-batch split
//! into shards of rows (each trimmed of its trailing padding, or its rows put end to end
//! where that is cheaper) and run side by side gives
//! the loss and, for every trainable parameter, the gradient of the whole micro-batch,
//! on the three fixture models, full fine-tuning and LoRA, plain and checkpointed.

use candle_core::{DType, Device, Tensor};
use ferrotune_data::rng::SplitMix64;
use ferrotune_model::tuning::{load_peft_adapter, train_everything};
use ferrotune_model::weights::load_model;
use ferrotune_model::{Batch, CausalLm, Example, Param, IGNORE_INDEX};
use ferrotune_testing::shared;
use ferrotune_train::parallel::{Pass, Workers};

const MODELS: [&str; 3] = ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"];

/// Five right-padded rows of 4 to 23 tokens, the first part of each unsupervised.
fn batch(vocab: u32) -> Batch {
    let mut rng = SplitMix64(5);
    let examples: Vec<Example> = (0..5)
        .map(|_| {
            let len = 4 + (rng.next_u64() % 20) as usize;
            let prompt = 1 + (rng.next_u64() % (len as u64 - 2)) as usize;
            let ids: Vec<u32> = (0..len)
                .map(|_| 1 + (rng.next_u64() % (vocab as u64 - 1)) as u32)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < prompt { IGNORE_INDEX } else { t as i64 })
                .collect();
            Example {
                input_ids: ids,
                labels,
                weights: None,
                reference_logp: None,
                desirable: None,
            }
        })
        .collect();
    Batch::padded(&examples, 0, 1, &Device::Cpu).unwrap()
}

fn model(name: &str, lora: bool) -> CausalLm {
    let dir = shared(&format!("fixtures/models/{name}"));
    let mut model = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    if lora {
        load_peft_adapter(&mut model, &dir.join("lora")).unwrap();
    } else {
        train_everything(&mut model).unwrap();
    }
    model
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    let num = num.to_scalar::<f32>().unwrap() as f64;
    let den = den.to_scalar::<f32>().unwrap() as f64;
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn shards_keep_every_row_once_drop_only_padding_and_even_out_the_tokens() {
    let whole = batch(100);
    let tokens = whole.row_tokens();
    let ids = |b: &Batch, r: usize, n: usize| {
        b.input_ids.get(r).unwrap().to_vec1::<u32>().unwrap()[..n].to_vec()
    };
    for parts in [2, 3, 5, 8] {
        let shards = whole.split_rows_balanced(parts).unwrap();
        assert_eq!(shards.len(), parts.min(5));
        let supervised: usize = shards.iter().map(|s| s.supervised_tokens).sum();
        assert_eq!(supervised, whole.supervised_tokens, "{parts} parts");
        // Each row of the whole batch is found once, whole and in place (only padding is
        // cut), in some shard; the longest row of a shard sets its length.
        let mut found = vec![0; whole.batch];
        for shard in &shards {
            let lengths = shard.row_tokens();
            for (r, &n) in lengths.iter().enumerate() {
                let row = ids(shard, r, n);
                let at = (0..whole.batch)
                    .find(|&w| tokens[w] == n && ids(&whole, w, n) == row)
                    .expect("a row of the whole batch");
                let (w, s) = (at * whole.seq_len, r * shard.seq_len);
                assert_eq!(
                    &whole.segment_ids[w..w + shard.seq_len],
                    &shard.segment_ids[s..s + shard.seq_len]
                );
                found[at] += 1;
            }
            assert_eq!(shard.seq_len, *lengths.iter().max().unwrap());
        }
        assert_eq!(found, vec![1; whole.batch], "{parts} parts");
    }
    // Rows of 23, 20, 5 and 4 tokens: two shards by row count would hold {23, 20} and
    // {5, 4}, 43 tokens at most; by tokens {23, 4} and {20, 5}.
    let lengths = [23usize, 20, 5, 4];
    let examples: Vec<Example> = lengths
        .iter()
        .map(|&n| Example {
            input_ids: vec![7; n],
            labels: vec![7; n],
            weights: None,
            reference_logp: None,
            desirable: None,
        })
        .collect();
    let rows = Batch::padded(&examples, 0, 1, &Device::Cpu).unwrap();
    let tokens: Vec<usize> = rows
        .split_rows_balanced(2)
        .unwrap()
        .iter()
        .map(|s| s.row_tokens().iter().sum())
        .collect();
    assert_eq!(tokens, vec![27, 25]);
}

#[test]
fn rows_end_to_end_keep_every_token_and_the_loss() {
    for name in MODELS {
        let model = model(name, false);
        let whole = batch(model.config.vocab_size as u32);
        let one = whole.concat_rows().unwrap();
        let real = whole.segment_ids.iter().filter(|&&s| s != 0).count();
        assert_eq!((one.batch, one.seq_len), (1, real));
        assert_eq!(one.supervised_tokens, whole.supervised_tokens);
        // One segment per sample, numbered on from row to row.
        let mut segments = one.segment_ids.clone();
        segments.dedup();
        assert_eq!(segments, (1..=5).collect::<Vec<u32>>());
        let (_, a) = model.forward_loss(&whole, false).unwrap();
        let (_, b) = model.forward_loss(&one, false).unwrap();
        let (a, b) = (
            a.sum.to_scalar::<f32>().unwrap() as f64,
            b.sum.to_scalar::<f32>().unwrap() as f64,
        );
        assert!((a - b).abs() / a < 1e-6, "{name}: {a} vs {b}");
    }
}

#[test]
fn shards_side_by_side_give_the_whole_batch_loss_and_gradients() {
    for name in MODELS {
        for lora in [false, true] {
            let model = model(name, lora);
            let batch = batch(model.config.vocab_size as u32);
            let scale = 1.0 / batch.supervised_tokens as f64;
            let params: Vec<&Param> = model.trainable_params();
            let whole = Workers::with_threads(1)
                .unwrap()
                .gradients(&model, &batch, &params, scale, Pass::Plain)
                .unwrap();
            let whole_grads = whole.grads.finish(&params).unwrap();
            for threads in [2, 3] {
                for pass in [Pass::Plain, Pass::Checkpointed] {
                    let workers = Workers::with_threads(threads).unwrap();
                    assert_eq!(workers.count(), threads);
                    let split = workers
                        .gradients(&model, &batch, &params, scale, pass)
                        .unwrap();
                    let what = format!("{name}, lora {lora}, {threads} threads, {pass:?}");
                    let loss = (split.loss_sum - whole.loss_sum).abs() / whole.loss_sum;
                    assert!(loss < 1e-6, "{what}: loss differs by {loss}");
                    assert!(split.grads.grads.iter().all(Option::is_some), "{what}");
                    let grads = split.grads.finish(&params).unwrap();
                    for ((p, a), b) in params.iter().zip(&grads).zip(&whole_grads) {
                        let d = rel_diff(a, b);
                        assert!(d < 1e-5, "{what}: {} differs by {d}", p.name());
                    }
                }
            }
        }
    }
}
