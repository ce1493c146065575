#!/usr/bin/env python3
"""Reference fixture for preference training (DPO family and KTO), made with LLaMA-Factory's own code.

Writes crates/ferrotune-train/tests/data/preference/ (README.md there describes every field):

* Part A, data (no model): LLaMA-Factory's real dataset path (get_dataset with a temporary
  dataset_info.json) over the first 8 records of dpo_en_demo.json, template `qwen3`, the Qwen3
  tokenizer, cutoff_len 128: the pairwise processor's chosen/rejected ids and labels (stage "rm",
  as LF's DPO workflow calls it) and the feedback processor's KTO ids, labels and KL ("mismatched")
  examples (stage "kto") for a KTO file made from the same 8 records.
* Part B, trainer (the tiny qwen2_bias_tied model with its LoRA adapter): a synthetic batch built
  from part A (ids mod 384, cut to 12..40 tokens), collated by LF's PairwiseDataCollatorWithPadding /
  KTODataCollatorWithPadding, pushed through LF's CustomDPOTrainer (7 loss settings) and
  CustomKTOTrainer (2 settings): log-probabilities, losses, LF's metrics, LoRA gradients; and a
  6-step HF/LF Trainer trajectory for the sigmoid DPO loss.

Run by hand from anywhere (paths default to ones relative to the repository root, which the script
changes into); never a test dependency:

    DISABLE_VERSION_CHECK=1 <venv>/bin/python scripts/make_preference_fixture.py

Environment used for the committed fixture: a dedicated venv with the versions LLaMA-Factory 0.9.5
supports (it pins transformers<=5.6.0, trl<=0.24; a venv with transformers 5.25 and no torchaudio,
which LF's data package imports unconditionally, does not run it):

    python3.11 -m venv <venv>
    <venv>/bin/pip install llamafactory==0.9.5 trl==0.24.0 transformers==5.6.0

which resolved to torch 2.15.0 (run on CPU), transformers 5.6.0, peft 0.18.1, trl 0.24.0,
llamafactory 0.9.5, accelerate 1.11.0, datasets 4.0.0, tokenizers 0.22.2. The versions actually
used are written into the fixture (meta.json) on every run.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

# llamafactory first: on import it patches transformers' `_is_package_available` (which returns a
# tuple since transformers 5.x) so that trl 0.24 does not take the absent `mergekit` for installed.
import llamafactory.extras.packages  # noqa: E402,F401  isort: skip
import llamafactory  # noqa: E402  isort: skip
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import datasets  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from llamafactory.data import (  # noqa: E402
    KTODataCollatorWithPadding,
    PairwiseDataCollatorWithPadding,
    get_dataset,
    get_template_and_fix_tokenizer,
)
from llamafactory.extras.constants import IGNORE_INDEX  # noqa: E402
from llamafactory.hparams import get_train_args  # noqa: E402
from llamafactory.model import load_tokenizer  # noqa: E402
from llamafactory.train.dpo.trainer import CustomDPOTrainer  # noqa: E402
from llamafactory.train.kto.trainer import CustomKTOTrainer  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

N_RECORDS = 8
CUTOFF_LEN = 128
TEMPLATE = "qwen3"
VOCAB = 384  # the tiny model's vocabulary

# Part B cut lengths per pair i: shared prompt prompt[:P[i]], chosen response[:RC[i]], rejected
# response[:RR[i]]. Sequence lengths P+RC and P+RR all lie in 12..40 and differ.
P = [8, 12, 6, 10, 14, 5, 9, 7]
RC = [10, 20, 6, 26, 12, 9, 31, 15]
RR = [14, 8, 18, 5, 25, 30, 7, 15]

# (name used in the fixture, LF finetuning arguments)
DPO_SETTINGS = [
    ("sigmoid", dict(pref_loss="sigmoid", pref_beta=0.1, dpo_label_smoothing=0.0)),
    ("sigmoid_smooth", dict(pref_loss="sigmoid", pref_beta=0.1, dpo_label_smoothing=0.1)),
    ("hinge", dict(pref_loss="hinge", pref_beta=0.1)),
    ("ipo", dict(pref_loss="ipo", pref_beta=0.1)),
    ("orpo", dict(pref_loss="orpo", pref_beta=0.1)),
    ("simpo", dict(pref_loss="simpo", pref_beta=2.0, simpo_gamma=0.5)),
    ("sigmoid_ftx", dict(pref_loss="sigmoid", pref_beta=0.1, pref_ftx=0.5)),
]
KTO_SETTINGS = [
    ("kto", dict(pref_beta=0.1, kto_chosen_weight=1.0, kto_rejected_weight=1.0)),
    ("kto_weighted", dict(pref_beta=0.1, kto_chosen_weight=1.5, kto_rejected_weight=0.8)),
]
TRAJ = dict(
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    optim="adamw_torch",
    max_grad_norm=1.0,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_steps=6,
    logging_steps=1,
    seed=42,
)


# ----------------------------------------------------------------------------- helpers


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/dpo_en_demo.json")
    ap.add_argument("--tokenizer", default="../shared/tokenizers/qwen3")
    ap.add_argument("--model", default="../shared/fixtures/models/qwen2_bias_tied")
    ap.add_argument("--out", default="crates/ferrotune-train/tests/data/preference")
    return ap.parse_args()


def f32(t):
    """A float32 tensor (or scalar) as Python floats: the exact float32 values, printed by repr."""
    t = torch.as_tensor(t).detach().to(torch.float32).cpu()
    return t.tolist()


def ints(t):
    return torch.as_tensor(t).detach().cpu().to(torch.int64).tolist()


def close(a, b, rtol=1e-5, atol=1e-6, what=""):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    ok = torch.allclose(a, b, rtol=rtol, atol=atol)
    assert ok, f"{what}: {a.tolist()} vs {b.tolist()}"


def lf_args(workdir, **overrides):
    """LF's own argument parsing (get_train_args), so every default and post-processing step
    (remove_unused_columns=False, label_names, use_ref_model, ...) is LF's."""
    args = dict(
        stage="dpo",
        do_train=True,
        finetuning_type="lora",
        model_name_or_path=overrides.pop("model_name_or_path"),
        dataset="dpo_demo",
        dataset_dir=str(workdir),
        template=TEMPLATE,
        cutoff_len=CUTOFF_LEN,
        max_samples=N_RECORDS,
        overwrite_cache=True,
        output_dir=str(workdir / "out"),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    args.update(overrides)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    return model_args, data_args, training_args, finetuning_args


def split_prompt(input_ids, labels):
    """(prompt ids, response ids) of an LF example: the prompt is the leading run of IGNORE_INDEX."""
    n = 0
    while n < len(labels) and labels[n] == IGNORE_INDEX:
        n += 1
    assert all(l != IGNORE_INDEX for l in labels[n:]), "labels mask is not prompt-then-response"
    assert labels[n:] == input_ids[n:]
    return input_ids[:n], input_ids[n:]


def response_logp_lengths(labels):
    """LF's valid_length: number of label positions != IGNORE_INDEX after the one-token shift."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1)


# ----------------------------------------------------------------------------- part A: data


def write_dataset_files(workdir, data_path):
    records = json.loads(Path(data_path).read_text())[:N_RECORDS]
    # KTO file: record i = the pair's conversation + (chosen answer, kto_tag true) for even i,
    # (rejected answer, kto_tag false) for odd i, in LF's sharegpt KTO layout.
    kto = []
    for i, r in enumerate(records):
        answer = r["chosen"] if i % 2 == 0 else r["rejected"]
        kto.append({"messages": r["conversations"] + [answer], "kto_tag": i % 2 == 0})
    (workdir / "kto_demo.json").write_text(json.dumps(kto, ensure_ascii=False))
    info = {
        "dpo_demo": {
            "file_name": str(Path(data_path).resolve()),
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "kto_demo": {
            "file_name": "kto_demo.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "kto_tag"},
        },
    }
    (workdir / "dataset_info.json").write_text(json.dumps(info, indent=2))


def lf_dataset(workdir, tokenizer_path, stage, dataset, cutoff_len):
    """Run LF's get_dataset exactly as its DPO (stage "rm") / KTO (stage "kto") workflows do."""
    model_args, data_args, training_args, _ = lf_args(
        workdir,
        stage="dpo" if stage == "rm" else "kto",
        model_name_or_path=str(tokenizer_path),
        dataset=dataset,
        cutoff_len=cutoff_len,
    )
    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage=stage, **tokenizer_module)
    rows = [module["train_dataset"][i] for i in range(len(module["train_dataset"]))]
    return rows, tokenizer, template, data_args


def part_a(workdir, tokenizer_path):
    pairs, tokenizer, template, data_args = lf_dataset(workdir, tokenizer_path, "rm", "dpo_demo", CUTOFF_LEN)
    full_pairs, _, _, _ = lf_dataset(workdir, tokenizer_path, "rm", "dpo_demo", 100_000)
    assert len(pairs) == N_RECORDS == len(full_pairs)

    out_pairs = []
    for i, (row, full) in enumerate(zip(pairs, full_pairs)):
        prompt, chosen = split_prompt(row["chosen_input_ids"], row["chosen_labels"])
        prompt_r, rejected = split_prompt(row["rejected_input_ids"], row["rejected_labels"])
        assert prompt == prompt_r, "pairwise prompt must be shared"
        fprompt, fchosen = split_prompt(full["chosen_input_ids"], full["chosen_labels"])
        _, frejected = split_prompt(full["rejected_input_ids"], full["rejected_labels"])
        # truncation keeps prefixes (infer_seqlen then [:len])
        assert fprompt[: len(prompt)] == prompt and fchosen[: len(chosen)] == chosen
        assert frejected[: len(rejected)] == rejected
        for k in ("chosen_attention_mask", "rejected_attention_mask"):
            assert row[k] == [1] * len(row[k.replace("attention_mask", "input_ids")])
        out_pairs.append(
            dict(
                chosen_input_ids=row["chosen_input_ids"],
                chosen_labels=row["chosen_labels"],
                rejected_input_ids=row["rejected_input_ids"],
                rejected_labels=row["rejected_labels"],
                prompt_len=len(prompt),
                chosen_response_len=len(chosen),
                rejected_response_len=len(rejected),
                untruncated_prompt_len=len(fprompt),
                untruncated_chosen_response_len=len(fchosen),
                untruncated_rejected_response_len=len(frejected),
                truncated=(len(fprompt), len(fchosen), len(frejected)) != (len(prompt), len(chosen), len(rejected)),
            )
        )

    kto_rows, _, _, _ = lf_dataset(workdir, tokenizer_path, "kto", "kto_demo", CUTOFF_LEN)
    kto_full, _, _, _ = lf_dataset(workdir, tokenizer_path, "kto", "kto_demo", 100_000)
    assert len(kto_rows) == N_RECORDS
    out_kto = []
    for i, (row, full) in enumerate(zip(kto_rows, kto_full)):
        assert row["kto_tags"] == (i % 2 == 0)
        prompt, resp = split_prompt(row["input_ids"], row["labels"])
        kl_prompt, kl_resp = split_prompt(row["kl_input_ids"], row["kl_labels"])
        # LF's KL rule, checked on the untruncated run: example i's KL completion is example
        # (i-1 mod n)'s completion, after example i's own prompt.
        fprompt, _ = split_prompt(full["input_ids"], full["labels"])
        fkl_prompt, fkl_resp = split_prompt(full["kl_input_ids"], full["kl_labels"])
        _, prev_resp = split_prompt(kto_full[i - 1]["input_ids"], kto_full[i - 1]["labels"])
        assert fkl_prompt == fprompt and fkl_resp == prev_resp, f"KL rule differs at example {i}"
        out_kto.append(
            dict(
                input_ids=row["input_ids"],
                labels=row["labels"],
                kl_input_ids=row["kl_input_ids"],
                kl_labels=row["kl_labels"],
                kto_tags=row["kto_tags"],
                prompt_len=len(prompt),
                response_len=len(resp),
                kl_prompt_len=len(kl_prompt),
                kl_response_len=len(kl_resp),
                kl_source_example=(i - 1) % N_RECORDS,
            )
        )

    think_ids = template.get_thought_word_ids(tokenizer)
    data = dict(
        description="Part A: LLaMA-Factory 0.9.5 pairwise (DPO) and feedback (KTO) processors; see README.md",
        records="first 8 records of dpo_en_demo.json (max_samples 8)",
        template=TEMPLATE,
        template_class=type(template).__name__,
        enable_thinking=data_args.enable_thinking,
        empty_thought_text=template.add_thought(),
        empty_thought_ids=think_ids,
        efficient_eos=template.efficient_eos,
        cutoff_len=CUTOFF_LEN,
        tokenizer=dict(
            eos_token=tokenizer.eos_token,
            eos_token_id=tokenizer.eos_token_id,
            pad_token=tokenizer.pad_token,
            pad_token_id=tokenizer.pad_token_id,
            padding_side=tokenizer.padding_side,
        ),
        pair0_chosen_text=tokenizer.decode(out_pairs[0]["chosen_input_ids"], skip_special_tokens=False),
        pair0_rejected_response_text=tokenizer.decode(
            out_pairs[0]["rejected_input_ids"][out_pairs[0]["prompt_len"] :], skip_special_tokens=False
        ),
        kto0_kl_text=tokenizer.decode(out_kto[0]["kl_input_ids"], skip_special_tokens=False),
        truncated_pairs=[i for i, p in enumerate(out_pairs) if p["truncated"]],
        pairs=out_pairs,
        kto=out_kto,
    )
    return data, tokenizer, template


# ----------------------------------------------------------------------------- part B: batches


def synthetic_pairs(data):
    """Pair i: prompt[:P[i]] + response[:R[i]], every id mod 384; labels -100 on the prompt."""
    feats = []
    for i, pair in enumerate(data["pairs"]):
        n = pair["prompt_len"]
        prompt = [t % VOCAB for t in pair["chosen_input_ids"][:n][: P[i]]]
        chosen = [t % VOCAB for t in pair["chosen_input_ids"][n:][: RC[i]]]
        rejected = [t % VOCAB for t in pair["rejected_input_ids"][n:][: RR[i]]]
        assert len(prompt) == P[i] and len(chosen) == RC[i] and len(rejected) == RR[i]
        feats.append(
            dict(
                chosen_input_ids=prompt + chosen,
                chosen_attention_mask=[1] * (len(prompt) + len(chosen)),
                chosen_labels=[IGNORE_INDEX] * len(prompt) + chosen,
                rejected_input_ids=prompt + rejected,
                rejected_attention_mask=[1] * (len(prompt) + len(rejected)),
                rejected_labels=[IGNORE_INDEX] * len(prompt) + rejected,
                images=None,
                videos=None,
                audios=None,
            )
        )
    lens = [len(f["chosen_input_ids"]) for f in feats] + [len(f["rejected_input_ids"]) for f in feats]
    assert min(lens) >= 12 and max(lens) <= 40, lens
    return feats


def synthetic_kto(data):
    """Example i: KTO example i's prompt[:P[i]] + its completion[:RC[i] (even) | RR[i] (odd)], mod 384.
    KL example i: example i's (synthetic) prompt + example (i-1 mod 8)'s (synthetic) completion,
    i.e. LF's rule applied to the synthetic examples."""
    prompts, comps, tags = [], [], []
    for i, ex in enumerate(data["kto"]):
        n = ex["prompt_len"]
        r = RC[i] if i % 2 == 0 else RR[i]
        prompts.append([t % VOCAB for t in ex["input_ids"][:n][: P[i]]])
        comps.append([t % VOCAB for t in ex["input_ids"][n:][:r]])
        assert len(prompts[-1]) == P[i] and len(comps[-1]) == r
        tags.append(ex["kto_tags"])
    feats = []
    for i in range(len(prompts)):
        kl_comp = comps[i - 1]
        feats.append(
            dict(
                input_ids=prompts[i] + comps[i],
                attention_mask=[1] * (len(prompts[i]) + len(comps[i])),
                labels=[IGNORE_INDEX] * len(prompts[i]) + comps[i],
                kl_input_ids=prompts[i] + kl_comp,
                kl_attention_mask=[1] * (len(prompts[i]) + len(kl_comp)),
                kl_labels=[IGNORE_INDEX] * len(prompts[i]) + kl_comp,
                kto_tags=tags[i],
                images=None,
                videos=None,
                audios=None,
            )
        )
    return feats


def public(feat, keys):
    return {k: feat[k] for k in keys}


# ----------------------------------------------------------------------------- part B: model


def load_policy(model_path):
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, str(Path(model_path) / "lora"), is_trainable=True)
    model.train()
    return model


def lora_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def check_against_shared_parity(model, model_path):
    """The shared fixture's LoRA parity batch: this stack must reproduce its logits and loss."""
    ref = load_file(str(Path(model_path) / "parity.safetensors"))
    lref = load_file(str(Path(model_path) / "lora" / "parity.safetensors"))
    with torch.no_grad():
        out = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
    assert (out.logits - lref["logits"]).abs().max() <= 1e-4, "LoRA logits differ from shared parity"
    close(out.loss, lref["loss"], rtol=1e-5, what="shared parity loss")


def pad_tokenizer_for_tiny_model(tokenizer):
    """The Qwen3 pad token (<|endoftext|>, 151643) is outside the tiny model's 384-id vocabulary:
    pad with id 0 instead (the only change to LF's tokenizer for part B)."""
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.convert_ids_to_tokens(0)
    assert tok.pad_token_id == 0 and tok.padding_side == "right"
    return tok


class RecordingDPOTrainer(CustomDPOTrainer):
    """LF's CustomDPOTrainer, unchanged, with what it computes kept aside."""

    def concatenated_forward(self, model, batch, is_ref_model=False):
        out = super().concatenated_forward(model, batch, is_ref_model=is_ref_model)
        self.rec["reference" if is_ref_model else "policy"] = {
            k: out[k].detach().clone() for k in ("chosen_logps", "rejected_logps", "chosen_logps_avg")
        }
        return out

    def compute_preference_loss(self, *args):
        losses, cr, rr = super().compute_preference_loss(*args)
        self.rec["preference_losses"] = losses.detach().clone()
        self.rec["chosen_rewards"], self.rec["rejected_rewards"] = cr.clone(), rr.clone()
        return losses, cr, rr

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        loss, metrics = super().get_batch_loss_metrics(model, batch, train_eval)
        self.rec["metrics"] = dict(metrics)
        return loss, metrics


class RecordingKTOTrainer(CustomKTOTrainer):
    """LF's CustomKTOTrainer, unchanged, with what it computes kept aside."""

    phase = "policy"

    def forward(self, model, batch, prefix=""):
        logits, logps, logps_avg = super().forward(model, batch, prefix=prefix)
        self.rec[f"{self.phase}_{prefix or 'target_'}logps"] = logps.detach().clone()
        self.rec[f"{self.phase}_{prefix or 'target_'}logps_avg"] = logps_avg.detach().clone()
        return logits, logps, logps_avg

    def compute_reference_log_probs(self, model, batch):
        self.phase = "reference"
        try:
            return super().compute_reference_log_probs(model, batch)
        finally:
            self.phase = "policy"

    def kto_loss(self, *args):
        losses, cr, rr, kl = super().kto_loss(*args)
        self.rec["kto_losses"] = losses.detach().clone()
        self.rec["chosen_rewards"], self.rec["rejected_rewards"] = cr.clone(), rr.clone()
        self.rec["kl"] = kl.detach().clone()
        return losses, cr, rr, kl

    def get_batch_loss_metrics(self, model, batch):
        loss, metrics = super().get_batch_loss_metrics(model, batch)
        self.rec["metrics"] = dict(metrics)
        return loss, metrics


def make_trainer(cls, model, tokenizer, template, workdir, model_path, stage, settings, train_dataset=None, **targs):
    _, _, training_args, finetuning_args = lf_args(
        workdir, stage=stage, model_name_or_path=str(model_path), disable_shuffling=True, **settings, **targs
    )
    collator_cls = PairwiseDataCollatorWithPadding if stage == "dpo" else KTODataCollatorWithPadding
    collator = collator_cls(  # as in LF's run_dpo / run_kto
        template=template,
        model=model,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX,
        tokenizer=tokenizer,
        processor=None,
    )
    trainer = cls(
        model=model,
        ref_model=None,  # LF's create_ref_model returns None for LoRA without ref_model: disable_adapter()
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=collator,
        train_dataset=train_dataset,
        tokenizer=tokenizer,
        processor=None,
    )
    trainer.rec = {}
    return trainer, collator, finetuning_args


def one_batch(trainer, model, collator, feats):
    """compute_loss + backward on one collated batch, as one HF training micro-step without the
    1/gradient_accumulation_steps factor (it is 1 here). Returns loss, grads, logged metrics."""
    batch = collator(copy.deepcopy(feats))
    collated = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    trainer.rec = {}
    trainer._stored_metrics.clear()
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in lora_params(model).items()}
    n_hist = len(trainer.state.log_history)
    trainer.log({"loss": loss.item()})  # LF's log: stored metrics reduced as during training
    logged = {k: v for k, v in trainer.state.log_history[n_hist].items() if k not in ("step", "epoch")}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, logged, collated


# ----------------------------------------------------------------------------- part B: DPO


def hand_dpo_losses(name, s, pc, pr, rc, rr, clen):
    """float64 re-computation of what LF returns (see README for the hinge/ipo caveat)."""
    beta = s["pref_beta"]
    if name == "orpo":
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        return -pc + beta * -F.logsigmoid(log_odds)
    if name == "simpo":
        return -F.logsigmoid(beta * ((pc - pr) - s["simpo_gamma"] / beta))
    ls = s.get("dpo_label_smoothing", 0.0)
    logits = (pc - pr) - (rc - rr)
    # LF 0.9.5 calls trl's dpo_loss without loss_type, so hinge and ipo get the sigmoid formula
    losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    if s.get("pref_ftx", 0.0) > 1e-6:
        losses = losses + s["pref_ftx"] * -(pc / clen)
    return losses


def intended_dpo_loss(name, s, pc, pr, rc, rr):
    """What trl's dpo_loss would give if LF passed loss_type (not what LF computes)."""
    if name not in ("hinge", "ipo"):
        return None
    beta = s["pref_beta"]
    logits = (pc - pr) - (rc - rr)
    if name == "hinge":
        return torch.relu(1 - beta * logits).mean().item()
    if name == "ipo":
        return ((logits - 1 / (2 * beta)) ** 2).mean().item()
    return None


def run_dpo_settings(model, tokenizer, template, workdir, model_path, feats):
    results, grads_out, collated = {}, {}, None
    sums = None
    for name, s in DPO_SETTINGS:
        trainer, collator, fa = make_trainer(
            RecordingDPOTrainer, model, tokenizer, template, workdir, model_path, "dpo", s
        )
        assert fa.use_ref_model == (s["pref_loss"] not in ("orpo", "simpo"))
        loss, grads, logged, batch = one_batch(trainer, model, collator, feats)
        rec = trainer.rec
        if collated is None:
            collated = batch
        labels = batch["labels"]
        n = labels.shape[0] // 2
        length = response_logp_lengths(labels)
        clen, rlen = length[:n], length[n:]
        averaged = s["pref_loss"] in ("ipo", "orpo", "simpo")
        pol, ref = rec["policy"], rec.get("reference")
        # sums of log-probabilities (the sigmoid run's are sums; the policy is the same in every run)
        if not averaged:
            cur_sums = (pol["chosen_logps"], pol["rejected_logps"], ref["chosen_logps"], ref["rejected_logps"])
            if sums is None:
                sums = cur_sums
            for a, b in zip(cur_sums, sums):
                close(a, b, rtol=1e-6, atol=1e-6, what=f"{name} sums vs sigmoid sums")
        else:
            close(pol["chosen_logps"] * clen, sums[0], rtol=1e-5, atol=1e-5, what=f"{name} avg*len")
            close(pol["rejected_logps"] * rlen, sums[1], rtol=1e-5, atol=1e-5, what=f"{name} avg*len")
            if ref is not None:
                close(ref["chosen_logps"] * clen, sums[2], rtol=1e-5, atol=1e-5, what=f"{name} ref avg*len")

        d64 = lambda t: t.to(torch.float64)  # noqa: E731
        pc, pr = d64(pol["chosen_logps"]), d64(pol["rejected_logps"])
        rc = d64(ref["chosen_logps"]) if ref is not None else None
        rr = d64(ref["rejected_logps"]) if ref is not None else None
        hand = hand_dpo_losses(name, s, pc, pr, rc, rr, d64(clen))
        close(hand.mean(), loss, rtol=1e-5, atol=1e-6, what=f"{name} loss by hand")
        m = rec["metrics"]
        if ref is not None:
            cr, rj = s["pref_beta"] * (pc - rc), s["pref_beta"] * (pr - rr)
        else:
            cr, rj = s["pref_beta"] * pc, s["pref_beta"] * pr
        close(m["rewards/chosen"], cr.mean(), what=f"{name} rewards/chosen")
        close(m["rewards/rejected"], rj.mean(), what=f"{name} rewards/rejected")
        close(m["rewards/margins"], (cr - rj).mean(), what=f"{name} rewards/margins")
        close(m["rewards/accuracies"], (cr > rj).double().mean(), what=f"{name} rewards/accuracies")
        close(m["logps/chosen"], pc.mean(), what=f"{name} logps/chosen")
        close(m["logps/rejected"], pr.mean(), what=f"{name} logps/rejected")
        if name == "orpo":
            close(m["sft_loss"], (-pc).mean(), what="orpo sft_loss")
            close(m["odds_ratio_loss"], ((hand + pc) / s["pref_beta"]).mean(), what="orpo odds_ratio_loss")
        if name == "sigmoid":  # logits/*: mean over every padded position and vocabulary entry
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            close(m["logits/chosen"], logits[:n].double().mean(), rtol=1e-5, what="logits/chosen")
            close(m["logits/rejected"], logits[n:].double().mean(), rtol=1e-5, what="logits/rejected")
        for k, v in m.items():  # LF's log of one micro-batch = the float32 of each metric
            close(logged[k], v, rtol=1e-6, what=f"{name} logged {k}")
        close(logged["loss"], loss, rtol=1e-6, what=f"{name} logged loss")

        entry = dict(
            finetuning_args={k: getattr(fa, k) for k in ("pref_loss", "pref_beta", "dpo_label_smoothing",
                                                          "simpo_gamma", "pref_ftx", "use_ref_model")},
            logps_averaged_by_length=averaged,
            policy_chosen_logps=f32(pol["chosen_logps"]),
            policy_rejected_logps=f32(pol["rejected_logps"]),
            policy_chosen_logps_avg=f32(pol["chosen_logps_avg"]),
            reference_chosen_logps=f32(ref["chosen_logps"]) if ref is not None else None,
            reference_rejected_logps=f32(ref["rejected_logps"]) if ref is not None else None,
            per_pair_losses=f32(rec["preference_losses"]),
            loss=float(loss),
            loss_hand_f64=hand.mean().item(),
            metrics=m,
            logged=logged,
        )
        intended = intended_dpo_loss(name, s, pc, pr, rc, rr)
        if intended is not None:
            close(loss, hand_dpo_losses("sigmoid", dict(pref_beta=s["pref_beta"]), pc, pr, rc, rr, None).mean(),
                  what=f"{name} is sigmoid in LF 0.9.5 + trl 0.24")
            entry["trl_intended_loss_f64_not_what_lf_computes"] = intended
        results[name] = entry
        for pname, g in grads.items():
            grads_out[f"grad.{name}.{pname}"] = g.contiguous()
    # gradients of hinge == sigmoid (same loss); ipo differs only by the averaging
    for pname in lora_params(model):
        close(grads_out[f"grad.hinge.{pname}"], grads_out[f"grad.sigmoid.{pname}"], rtol=1e-5, atol=1e-7,
              what="hinge grad == sigmoid grad")
    common = dict(
        chosen_lengths=ints(clen),
        rejected_lengths=ints(rlen),
        policy_chosen_logps_sum=f32(sums[0]),
        policy_rejected_logps_sum=f32(sums[1]),
        reference_chosen_logps_sum=f32(sums[2]),
        reference_rejected_logps_sum=f32(sums[3]),
    )
    return results, common, grads_out, collated


def run_trajectory(model_path, tokenizer, template, workdir, feats, settings):
    """6 optimizer steps of LF's CustomDPOTrainer.train() (sigmoid), then a plain-torch replay."""
    model = load_policy(model_path)
    ds = datasets.Dataset.from_list(copy.deepcopy(feats))
    trainer, collator, _ = make_trainer(
        CustomDPOTrainer, model, tokenizer, template, workdir, model_path, "dpo", settings, train_dataset=ds, **TRAJ
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, torch.utils.data.SequentialSampler)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(logs) == TRAJ["max_steps"]
    final = {n: p.detach().clone() for n, p in lora_params(model).items()}

    # replay: per micro-batch mean over its pairs, / accumulation steps, summed; clip; AdamW
    model2 = load_policy(model_path)
    tr2, col2, _ = make_trainer(RecordingDPOTrainer, model2, tokenizer, template, workdir, model_path, "dpo", settings)
    params = list(lora_params(model2).values())
    opt = torch.optim.AdamW(params, lr=TRAJ["learning_rate"], weight_decay=0.0)
    order = [i % len(feats) for i in range(TRAJ["max_steps"] * 4)]
    steps = []
    for step in range(TRAJ["max_steps"]):
        idx = order[4 * step : 4 * step + 4]
        micro = [idx[:2], idx[2:]]
        step_loss = 0.0
        for mb in micro:
            batch = col2(copy.deepcopy([feats[i] for i in mb]))
            loss = tr2.compute_loss(model2, batch) / TRAJ["gradient_accumulation_steps"]
            loss.backward()
            step_loss += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(params, TRAJ["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        log = logs[step]
        close(log["loss"], step_loss, rtol=1e-5, what=f"step {step + 1} loss replay")
        close(log["grad_norm"], norm, rtol=1e-4, what=f"step {step + 1} grad_norm replay")
        close(log["learning_rate"], TRAJ["learning_rate"], rtol=1e-9, what="lr")
        steps.append(
            dict(
                step=step + 1,
                micro_batches=micro,
                loss=log["loss"],
                grad_norm=log["grad_norm"],
                learning_rate=log["learning_rate"],
                logged={k: v for k, v in log.items() if k not in ("step",)},
            )
        )
    for n, p in lora_params(model2).items():
        rel = ((p - final[n]).norm() / final[n].norm()).item()
        assert rel < 1e-5, f"replay final weight {n}: {rel}"
    return steps, {f"final.{n}": w.contiguous() for n, w in final.items()}


# ----------------------------------------------------------------------------- part B: KTO


def run_kto_settings(model, tokenizer, template, workdir, model_path, feats):
    results, grads_out, collated = {}, {}, None
    for name, s in KTO_SETTINGS:
        trainer, collator, fa = make_trainer(
            RecordingKTOTrainer, model, tokenizer, template, workdir, model_path, "kto", s
        )
        loss, grads, logged, batch = one_batch(trainer, model, collator, feats)
        rec = trainer.rec
        if collated is None:
            collated = batch
        tags = batch["kto_tags"]
        d64 = lambda t: t.to(torch.float64)  # noqa: E731
        pt, rt = d64(rec["policy_target_logps"]), d64(rec["reference_target_logps"])
        pk, rk = d64(rec["policy_kl_logps"]), d64(rec["reference_kl_logps"])
        beta = s["pref_beta"]
        kl = (pk - rk).mean().clamp(min=0)
        close(rec["kl"], kl, rtol=1e-5, atol=1e-6, what=f"{name} kl")
        ch = 1 - torch.sigmoid(beta * ((pt - rt)[tags] - kl))
        rj = 1 - torch.sigmoid(beta * (kl - (pt - rt)[~tags]))
        hand = torch.cat([s["kto_chosen_weight"] * ch, s["kto_rejected_weight"] * rj]).mean()
        close(hand, loss, rtol=1e-5, atol=1e-7, what=f"{name} loss by hand")
        m = rec["metrics"]
        close(m["rewards/chosen_sum"], (beta * (pt - rt)[tags]).sum(), what=f"{name} rewards/chosen_sum")
        close(m["rewards/rejected_sum"], (beta * (pt - rt)[~tags]).sum(), what=f"{name} rewards/rejected_sum")
        close(m["logps/chosen_sum"], pt[tags].sum(), what=f"{name} logps/chosen_sum")
        close(logged["rewards/margins"], logged["rewards/chosen"] - logged["rewards/rejected"], what="margins")
        with torch.no_grad():  # logits/*_sum: sum over every padded position and vocabulary entry
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        close(m["logits/chosen_sum"], logits[tags].sum(), rtol=1e-5, what="logits/chosen_sum")
        close(m["logits/rejected_sum"], logits[~tags].sum(), rtol=1e-5, what="logits/rejected_sum")
        close(logged["logits/chosen"], logits[tags].sum() / tags.sum(), rtol=1e-5, what="logged logits/chosen")
        results[name] = dict(
            finetuning_args={k: getattr(fa, k) for k in ("pref_beta", "kto_chosen_weight", "kto_rejected_weight",
                                                          "pref_ftx")},
            policy_logps=f32(rec["policy_target_logps"]),
            policy_logps_avg=f32(rec["policy_target_logps_avg"]),
            reference_logps=f32(rec["reference_target_logps"]),
            policy_kl_logps=f32(rec["policy_kl_logps"]),
            reference_kl_logps=f32(rec["reference_kl_logps"]),
            kl=float(rec["kl"]),
            kl_unclamped_f64=(pk - rk).mean().item(),
            per_example_losses_desirable_then_undesirable=f32(rec["kto_losses"]),
            loss=float(loss),
            loss_hand_f64=hand.item(),
            metrics=m,
            logged=logged,
        )
        for pname, g in grads.items():
            grads_out[f"grad.{name}.{pname}"] = g.contiguous()
    labels = collated["labels"]
    common = dict(
        lengths=ints(response_logp_lengths(labels)),
        kl_lengths=ints(response_logp_lengths(collated["kl_labels"])),
    )
    return results, common, grads_out, collated


# ----------------------------------------------------------------------------- main


def main():
    args = parse_args()
    os.chdir(REPO_ROOT)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="pref_fixture_"))
    try:
        write_dataset_files(workdir, args.data)
        data, qwen_tok, template = part_a(workdir, args.tokenizer)
        tok = pad_tokenizer_for_tiny_model(qwen_tok)

        dpo_feats = synthetic_pairs(data)
        kto_feats = synthetic_kto(data)
        for i, (k, d) in enumerate(zip(kto_feats, dpo_feats)):  # same prompts and answers by construction
            side = "chosen" if i % 2 == 0 else "rejected"
            assert k["input_ids"] == d[f"{side}_input_ids"] and k["labels"] == d[f"{side}_labels"]

        model = load_policy(args.model)
        check_against_shared_parity(model, args.model)
        init = {f"init.{n}": p.detach().clone().contiguous() for n, p in lora_params(model).items()}

        dpo_results, dpo_common, dpo_grads, dpo_batch = run_dpo_settings(
            model, tok, template, workdir, args.model, dpo_feats
        )
        kto_results, kto_common, kto_grads, kto_batch = run_kto_settings(
            model, tok, template, workdir, args.model, kto_feats
        )
        steps, final = run_trajectory(args.model, tok, template, workdir, dpo_feats, dict(DPO_SETTINGS[0][1]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    pair_keys = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    kto_keys = ["input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tags"]
    dpo = dict(
        pairs=[public(f, pair_keys) for f in dpo_feats],
        cut=dict(prompt=P, chosen_response=RC, rejected_response=RR),
        collated={k: ints(v) for k, v in dpo_batch.items()},
        **dpo_common,
        settings=dpo_results,
        trajectory=dict(config=TRAJ, setting="sigmoid", steps=steps),
    )
    kto = dict(
        examples=[public(f, kto_keys) for f in kto_feats],
        collated={k: (v.tolist() if k == "kto_tags" else ints(v)) for k, v in kto_batch.items()},
        **kto_common,
        settings=kto_results,
    )
    meta = dict(
        generator="scripts/make_preference_fixture.py",
        command="DISABLE_VERSION_CHECK=1 <venv>/bin/python scripts/make_preference_fixture.py",
        inputs=dict(data=args.data, tokenizer=args.tokenizer, model=args.model),
        versions=dict(
            python=sys.version.split()[0],
            torch=torch.__version__,
            transformers=transformers.__version__,
            peft=peft.__version__,
            trl=trl.__version__,
            llamafactory=llamafactory.__version__,
            datasets=datasets.__version__,
        ),
    )

    out.mkdir(parents=True, exist_ok=True)
    dump = lambda name, obj: (out / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")  # noqa: E731
    dump("data.json", data)
    dump("dpo.json", dpo)
    dump("kto.json", kto)
    dump("meta.json", meta)
    save_file({**init, **dpo_grads, **kto_grads, **final}, str(out / "tensors.safetensors"),
              metadata={"generator": "scripts/make_preference_fixture.py"})
    for f in sorted(out.iterdir()):
        print(f"{f}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
