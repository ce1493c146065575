#!/usr/bin/env python3
"""LLaMA-Factory's preprocessing time on a dataset: the peer side of the data-preparation
ratio in docs/PERFORMANCE.md. Run by hand, never by the tests:

    pip install --no-deps llamafactory==0.9.5
    pip install "datasets<=4.0.0" omegaconf fire "tyro<0.9.0" einops sentencepiece tiktoken
    python3 scripts/lf_prep_bench.py --dataset-dir DIR --dataset big \
        --tokenizer ../shared/tokenizers/qwen3 --template qwen3 --cutoff-len 2048 --workers 2 \
        [--dump ids_labels.jsonl]

It times LLaMA-Factory's own `get_dataset` (read, convert, render, tokenize, mask) with
`overwrite_cache: true`, and prints one JSON line: samples, tokens, seconds. With --dump it
writes each example's input_ids and labels, for comparison with `ferrotune data preview
--json`. Modules that LLaMA-Factory imports for training or multimodal data but never
calls while preprocessing text (trl, torchaudio, av, ...) are stood in for by empty
modules when they are not installed; `DISABLE_VERSION_CHECK=1` lets it run beside a newer
transformers.
"""

import argparse
import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import time
import types

STUBBED = ["trl", "torchaudio", "av", "torchvision", "librosa", "decord", "jieba", "nltk", "rouge_chinese"]


def stub_missing():
    class Missing:
        def __init__(self, *a, **k):
            raise RuntimeError("a stubbed module was called")

    for name in STUBBED:
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            def attribute(attr, _name=name):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return Missing

            module.__getattr__ = attribute
            module.__path__ = []
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--dataset", required=True, help="names in dataset_info.json, comma-separated")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--template", default="qwen3")
    p.add_argument("--cutoff-len", type=int, default=2048)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dump", help="write input_ids and labels of every example here (JSON Lines)")
    a = p.parse_args()
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    stub_missing()
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    out = tempfile.mkdtemp()
    model_args, data_args, training_args, _, _ = get_train_args(
        dict(
            stage="sft",
            do_train=True,
            model_name_or_path=os.path.abspath(a.tokenizer),
            dataset=a.dataset,
            dataset_dir=os.path.abspath(a.dataset_dir),
            template=a.template,
            cutoff_len=a.cutoff_len,
            preprocessing_num_workers=a.workers,
            overwrite_cache=True,
            finetuning_type="lora",
            output_dir=out,
            report_to="none",
        )
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    started = time.time()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    seconds = time.time() - started
    train = module["train_dataset"]
    tokens = sum(len(ids) for ids in train["input_ids"])
    if a.dump:
        with open(a.dump, "w") as f:
            for row in train:
                f.write(json.dumps({"input_ids": row["input_ids"], "labels": row["labels"]}) + "\n")
    print(json.dumps({"samples": len(train), "tokens": tokens, "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
