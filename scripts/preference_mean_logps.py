"""The share of preference pairs whose chosen answer has the higher mean log-probability
per token, computed with transformers (and PEFT for an adapter): an outside check of
ferrotune's `mean_logps/accuracies` metric (docs/PREFERENCE-RUNS.md).

Each pair (dpo_en_demo's layout: `conversations`, `chosen`, `rejected`) is rendered
through the tokenizer's chat template, cut with LLaMA-Factory's `infer_seqlen` rule at
--cutoff-len, and scored on the answer tokens. Run by hand; never a test dependency:

    python scripts/preference_mean_logps.py --model MODEL --pairs PAIRS.json [--adapter DIR]
"""

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def messages(turns):
    return [{"role": ROLES.get(t["from"], t["from"]), "content": t["value"]} for t in turns]


def infer_seqlen(source_len, target_len, cutoff_len):
    """LLaMA-Factory's rule (llamafactory/data/processor/processor_utils.py)."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    max_source_len = max(cutoff_len - new_target_len, 0)
    new_source_len = min(max_source_len, source_len)
    return new_source_len, new_target_len


def ids(tok, conversation, generation_prompt=False):
    text = tok.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=False)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--cutoff-len", type=int, default=256)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    gaps = []
    for pair in json.load(open(a.pairs)):
        prompt = messages(pair["conversations"])
        prompt_ids = ids(tok, prompt, generation_prompt=True)
        answers = [ids(tok, prompt + messages([pair[k]]))[len(prompt_ids):] for k in ("chosen", "rejected")]
        source, target = infer_seqlen(len(prompt_ids), max(map(len, answers)), a.cutoff_len)
        means = []
        for answer in answers:
            x = torch.tensor([prompt_ids[:source] + answer[:target]])
            with torch.no_grad():
                logps = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            token_logps = logps[torch.arange(x.shape[1] - 1), x[0, 1:]][source - 1:]
            means.append(token_logps.mean().item())
        gaps.append(means[0] - means[1])
    share = sum(g > 0 for g in gaps) / len(gaps)
    print(json.dumps({"pairs": len(gaps), "mean_logps_accuracy": share, "gaps": sorted(round(g, 4) for g in gaps)}))


if __name__ == "__main__":
    main()
