//! Neat packing changes how examples share rows, never the loss: the summed token loss
//! over neat-packed rows equals the one over one example per padded row. Greedy rows keep
//! every token.

use candle_core::{DType, Device};
use ferrotune_data::pack::{pack_greedy, Packing};
use ferrotune_data::pipeline::PreparedSample;
use ferrotune_data::rng::SplitMix64;
use ferrotune_data::samples::Samples;
use ferrotune_data::{Encoded, RecordRef, IGNORE_INDEX};
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
                second_start: None,
                desirable: None,
            }
        })
        .collect()
}

fn samples(data: &[Encoded]) -> Samples {
    Samples::from_memory(
        data.iter()
            .enumerate()
            .map(|(i, e)| PreparedSample {
                dataset: 0,
                at: RecordRef::new(std::path::Path::new("test"), i, None),
                encoded: e.clone(),
            })
            .collect(),
    )
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
        let plain = Rows::build(samples(&data), Packing::None, 64);
        let neat = Rows::build(samples(&data), Packing::Neat, 64);
        assert!(neat.len() < plain.len() / 2, "{name}: {} rows", neat.len());
        let (a, ta) = total_loss(&model, &plain, 4);
        let (b, tb) = total_loss(&model, &neat, 2);
        assert_eq!(ta, tb, "{name}: supervised tokens");
        assert!((a - b).abs() / a.abs() < 1e-5, "{name}: {a} vs {b}");
    }
}

#[test]
fn greedy_rows_are_the_examples_end_to_end() {
    let mut data = examples(50, 30);
    // One example with loss weights: every row then carries weights (1 elsewhere).
    data[7].weights = Some((0..data[7].len()).map(|i| 0.5 + i as f32).collect());
    for weighted in [false, true] {
        let data = if weighted {
            data.clone()
        } else {
            data[8..].to_vec()
        };
        let refs: Vec<&Encoded> = data.iter().collect();
        let (want, want_report) = pack_greedy(&refs, 32);
        let rows = Rows::build(samples(&data), Packing::Greedy, 32);
        let report = rows.report.as_ref().unwrap();
        assert_eq!(
            (report.rows, report.tokens, report.row_len),
            (want_report.rows, want_report.tokens, want_report.row_len)
        );
        assert_eq!(rows.len(), want.len());
        for (r, w) in want.iter().enumerate() {
            let got = rows.row(r).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].input_ids, w.input_ids, "row {r}");
            assert_eq!(got[0].labels, w.labels, "row {r}");
            assert_eq!(got[0].weights, w.weights, "row {r}");
        }
    }
}
