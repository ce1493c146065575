#!/usr/bin/env python3
"""Dump a reference batch computed by transformers, for `ferrotune model check`.

Writes the parity.safetensors layout ferrotune's fixtures use: input_ids, attention_mask,
labels, logits, loss, grad.<name> for every trainable parameter, and (with --adapter)
merged.<name> for the merged LoRA weights. Run it where torch and transformers (and peft
for --adapter, gguf for --gguf-file) are installed:

    python3 scripts/make_reference.py MODEL_DIR reference.safetensors
    python3 scripts/make_reference.py DIR ref.safetensors --gguf-file model.Q4_1.gguf
    ferrotune model check MODEL_DIR --reference reference.safetensors

The batch is the given texts, right-padded; the first half of every row counts as
prompt (label -100), so the masking path is exercised too.
"""

import argparse

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

DEFAULT_TEXTS = [
    "The capital of France is Paris. It is known for the Eiffel Tower.",
    "Rust is a systems programming language focused on safety.",
    "你好，世界！今天天气很好。",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model folder (or the folder holding --gguf-file)")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--gguf-file", help="a GGUF file inside MODEL to load instead of safetensors")
    ap.add_argument("--adapter", help="a PEFT LoRA adapter folder")
    ap.add_argument("--text", action="append", help="a text of the batch (repeatable)")
    ap.add_argument("--no-grad", action="store_true", help="skip gradients (large models)")
    args = ap.parse_args()

    kwargs = {"dtype": torch.float32, "attn_implementation": "eager"}
    if args.gguf_file:
        kwargs["gguf_file"] = args.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(args.model, gguf_file=args.gguf_file) if args.gguf_file \
        else AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    model.eval()  # no dropout; gradients still flow

    texts = args.text or DEFAULT_TEXTS
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        half = len(r) // 2
        labels[i, half : len(r)] = torch.tensor(r[half:])

    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().float().reshape(1),
    }
    if not args.no_grad:
        out.loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                name = name.replace("base_model.model.", "")
                tensors[f"grad.{name}"] = p.grad.detach().float().contiguous()
    if args.adapter:
        merged = model.merge_and_unload()
        for name, p in merged.named_parameters():
            if "q_proj" in name or "down_proj" in name:
                tensors[f"merged.{name}"] = p.detach().float().contiguous()
    save_file(tensors, args.out)
    print(f"wrote {args.out}: {len(rows)} rows x {width} tokens, loss {out.loss.item():.6f}")


if __name__ == "__main__":
    main()
