#!/usr/bin/env bash
# Catastrophic forgetting on a small run, and what EWC and mixing (replay) do about it.
# Figures go to docs/FORGETTING.md. Needs ../shared/data (or FERROTUNE_SHARED) and python3
# for splitting the data; about ten minutes on a 2-core CPU.
#
#   1. "general" model: a tiny Llama (model init) trained on 400 alpaca_en_demo samples;
#   2. domain SFT on the identity data, three ways: plain, with EWC (Fisher from the
#      general data), and mixed with 20% general replay;
#   3. each run's eval loss on 100 held-out alpaca samples before and after.
set -euo pipefail
FT=${FT:-target/release/ferrotune}
SHARED=${FERROTUNE_SHARED:-../shared}
OUT=${OUT:-runs/forgetting}
mkdir -p "$OUT/data"

python3 - "$SHARED/data" "$OUT/data" <<'PY'
import json, sys, shutil
src, out = sys.argv[1], sys.argv[2]
alpaca = json.load(open(f"{src}/alpaca_en_demo.json"))
json.dump(alpaca[:400], open(f"{out}/general_train.json", "w"), ensure_ascii=False)
json.dump(alpaca[-100:], open(f"{out}/general_heldout.json", "w"), ensure_ascii=False)
shutil.copy(f"{src}/identity.json", f"{out}/identity.json")
PY

cat > "$OUT/model_config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 344,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "tie_word_embeddings": true, "rope_theta": 10000.0, "max_position_embeddings": 512}
JSON
[ -d "$OUT/init" ] || $FT model init --config "$OUT/model_config.json" --tokenizer examples/tokenizer --out "$OUT/init"

common() {
  cat <<YAML
dataset_dir: $OUT/data
cutoff_len: 256
placeholders: {name: Ferro, author: the ferrotune project}
finetuning_type: full
per_device_train_batch_size: 8
per_device_eval_batch_size: 8
lr_scheduler_type: cosine
warmup_ratio: 0.05
logging_steps: 10
save_strategy: "no"
overwrite_output_dir: true
eval_dataset: general_heldout.json
seed: 1
YAML
}

# 1. The general model.
{ common; cat <<YAML
model_name_or_path: $OUT/init
dataset: general_train.json
learning_rate: 3.0e-3
num_train_epochs: 6
output_dir: $OUT/general
YAML
} > "$OUT/general.yaml"
[ -f "$OUT/general/model.safetensors" ] || $FT train "$OUT/general.yaml"

# 2. Domain SFT three ways, from the general model.
domain() { # name, extra yaml
  { common; cat <<YAML
model_name_or_path: $OUT/general
learning_rate: 3.0e-3
num_train_epochs: 8
output_dir: $OUT/$1
$2
YAML
  } > "$OUT/$1.yaml"
  $FT train "$OUT/$1.yaml"
}
domain plain "dataset: identity.json"
domain ewc "dataset: identity.json
ewc_lambda: ${EWC_LAMBDA:-100000}
ewc_dataset: general_train.json
ewc_samples: 400"
domain mixed "dataset: identity.json, general_train.json:20%"

# 3. The table.
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| run | general eval loss before | after | rise | final train loss |")
print("|---|---|---|---|---|")
for run in ["plain", "ewc", "mixed"]:
    recs = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
    ev = [r["eval_loss"] for r in recs if "eval_loss" in r]
    train = [r["loss"] for r in recs if "loss" in r]
    print(f"| {run} | {ev[0]:.4f} | {ev[-1]:.4f} | {ev[-1]-ev[0]:+.4f} | {train[-1]:.4f} |")
PY
