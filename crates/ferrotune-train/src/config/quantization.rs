//! LLaMA-Factory's quantization keys, read into how ferrotune holds a frozen base:
//! `quantization_bit: 8` stores the decoder's linear weights as q8_0, `4` as q4_k (the
//! K-quant with 4.5 bits a weight, llama.cpp's usual 4-bit choice; rows its 256-weight
//! superblocks do not divide fall back as llama.cpp does, to q5_0), the embeddings and an
//! untied head as bf16 (as bitsandbytes leaves them in 16 bits). bitsandbytes, HQQ and
//! EETQ are GPU libraries: their keys are accepted and mapped, with a note.

use candle_core::quantized::GgmlDType;
use ferrotune_data::unknown_choice;
use ferrotune_model::stored::{parse_storage, storage_name, STORAGE_TYPES};
use ferrotune_model::weights::Quantization;

use super::{FinetuningType, TrainArgs};
use ferrotune_model::ops::bf16::has_avx512_bf16;

/// The `quantization_method` values LLaMA-Factory accepts.
const METHODS: [&str; 4] = ["bitsandbytes", "bnb", "hqq", "eetq"];

/// How the base is held, and notes for the user about the keys' mapping.
#[derive(Debug, Default)]
pub struct QuantizationPlan {
    pub quantization: Option<Quantization>,
    pub notes: Vec<String>,
}

impl TrainArgs {
    /// How a model folder's matrices are held when the base loads, from the quantization
    /// keys' plan (None: f32): the keys' types, else bf16 for LoRA with bf16 products on a
    /// CPU that has them (the base is read straight into bf16, never held in f32). The
    /// loader and the memory plan both ask here. A GGUF base keeps its file's types.
    pub fn base_storage(&self, plan: &QuantizationPlan) -> Option<Quantization> {
        let bf16_base = Quantization {
            matrices: GgmlDType::BF16,
            embeddings: GgmlDType::BF16,
        };
        match (plan.quantization, self.finetuning_type) {
            (Some(q), _) => Some(q),
            (None, FinetuningType::Lora) if self.bf16 && has_avx512_bf16() => Some(bf16_base),
            _ => None,
        }
    }

    /// The quantization the keys ask for, or an error naming the key and its choices.
    pub fn quantization_plan(&self) -> Result<QuantizationPlan, String> {
        let mut notes = Vec::new();
        let Some(bits) = self.quantization_bit else {
            return Ok(QuantizationPlan::default());
        };
        let method = self
            .quantization_method
            .as_deref()
            .unwrap_or("bitsandbytes");
        if !METHODS.contains(&method) {
            return Err(unknown_choice("quantization_method", method, &METHODS));
        }
        notes.push(format!(
            "quantization_method {method}: a GPU library; ferrotune quantizes into llama.cpp's \
             block types and multiplies them on the CPU"
        ));
        let matrices = match (bits, self.quantization_type.as_deref()) {
            (8, None) => GgmlDType::Q8_0,
            (8, Some(t)) => return Err(format!(
                "quantization_type {t:?} goes with quantization_bit: 4; quantization_bit: 8 stores q8_0"
            )),
            (4, None | Some("nf4") | Some("fp4")) => {
                let asked = self.quantization_type.as_deref().unwrap_or("nf4");
                notes.push(format!(
                    "quantization_type {asked}: bitsandbytes' 4-bit format; ferrotune stores q4_k \
                     (4.5 bits a weight; q5_0 for rows not a multiple of 256)"
                ));
                if self.double_quantization {
                    notes.push(
                        "double_quantization: q4_k's block scales are already quantized (6 bits \
                         within 256-weight superblocks)"
                            .into(),
                    );
                }
                GgmlDType::Q4K
            }
            (4, Some(name)) => parse_storage(name).ok_or_else(|| {
                let mut accepted = vec!["nf4", "fp4"];
                accepted.extend(STORAGE_TYPES.iter().map(|(n, _)| *n));
                unknown_choice("quantization_type", name, &accepted)
            })?,
            (other, _) => {
                return Err(format!(
                    "quantization_bit must be 4 or 8, got {other} (8: q8_0; 4: q4_k)"
                ))
            }
        };
        notes.push(format!(
            "quantization_bit {bits}: the decoder's linear weights are held as {}, the embeddings \
             and an untied head as bf16; adapters, norms and the optimizer stay f32",
            storage_name(matrices)
        ));
        Ok(QuantizationPlan {
            quantization: Some(Quantization {
                matrices,
                embeddings: GgmlDType::BF16,
            }),
            notes,
        })
    }
}
