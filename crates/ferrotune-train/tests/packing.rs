//! Neat packing changes how examples share rows, never the loss: the summed token loss
//! over neat-packed rows equals the one over one example per padded row. Greedy rows keep
//! every token.

use candle_core::{DType, Device};
use ferrotune_data::pack::Packing;
use ferrotune_data::rng::SplitMix64;
use ferrotune_data::{Encoded, IGNORE_INDEX};
use ferrotune_model::weights::load_model;
use ferrotune_testing::shared;
use ferrotune_train::rows::Rows;

fn examples(vocab: u32, n: usize) -> Vec<Encoded> {
    let mut rng = SplitMix64(11);
    (0..n)
        .map(|_| {
            let len = 3 + (rng.next_u64() % 20) as usize;
            let prompt = 1 + (rng.next_u64() % (len as u64 - 1)) as usize;
            let ids: Vec<u32> = (0..len)
                .map(|_| 1 + (rng.next_u64() % (vocab as u64 - 1)) as u32)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    if i < prompt {
                        IGNORE_INDEX
                    } else {
                        i64::from(t)
                    }
                })
                .collect();
            Encoded {
                input_ids: ids,
                labels,
                weights: None,
                truncated: false,
            }
        })
        .collect()
}

fn total_loss(model: &ferrotune_model::CausalLm, rows: &Rows, per_batch: usize) -> (f64, usize) {
    let order: Vec<usize> = (0..rows.len()).collect();
    let (mut sum, mut tokens) = (0f64, 0);
    for chunk in order.chunks(per_batch) {
        let batch = rows.batch(chunk, 0, &Device::Cpu).unwrap();
        let (_, loss) = model.forward_loss(&batch, false).unwrap();
        sum += loss.sum.to_scalar::<f32>().unwrap() as f64;
        tokens += batch.supervised_tokens;
    }
    (sum, tokens)
}

#[test]
fn neat_packed_loss_equals_the_unpacked_loss() {
    for name in ["llama_gqa_untied", "qwen2_bias_tied", "qwen3_qknorm_tied"] {
        let model = load_model(
            &shared(&format!("fixtures/models/{name}")),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let data = examples(model.config.vocab_size as u32, 24);
        let refs: Vec<&Encoded> = data.iter().collect();
        let plain = Rows::build(&refs, Packing::None, 64);
        let neat = Rows::build(&refs, Packing::Neat, 64);
        assert!(neat.len() < plain.len() / 2, "{name}: {} rows", neat.len());
        let (a, ta) = total_loss(&model, &plain, 4);
        let (b, tb) = total_loss(&model, &neat, 2);
        assert_eq!(ta, tb, "{name}: supervised tokens");
        assert!((a - b).abs() / a.abs() < 1e-5, "{name}: {a} vs {b}");
    }
}

#[test]
fn greedy_rows_hold_every_token() {
    let data = examples(50, 30);
    let refs: Vec<&Encoded> = data.iter().collect();
    let rows = Rows::build(&refs, Packing::Greedy, 32);
    let total: usize = data.iter().map(Encoded::len).sum();
    assert_eq!(rows.report.as_ref().unwrap().tokens, total);
    assert_eq!(
        rows.examples
            .iter()
            .map(|e| e.input_ids.len())
            .sum::<usize>(),
        total
    );
    assert!(rows.examples.iter().all(|e| e.input_ids.len() <= 32));
}
