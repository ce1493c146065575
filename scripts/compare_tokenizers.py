#!/usr/bin/env python3
"""Compare a tokenizer.json written by ferrotune (e.g. by `model import-gguf`) with the
tokenizer transformers builds, on English, Chinese, special-token and odd-spacing text.

    python3 scripts/compare_tokenizers.py OURS_DIR REFERENCE_DIR [--gguf-file F]

Needs transformers (and gguf for --gguf-file). Exits non-zero on any difference.
"""

import argparse
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer

TEXTS = [
    "What is the capital of France?",
    "Hello world! It's 2026, and the price is $1,234.56.",
    "  leading spaces\n\nand\ttabs",
    "你好，世界！今天天气很好。",
    "我是一个人工智能助手，由 Hugging Face 训练。",
    "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n",
    "naïve café déjà vu 😀 12345678",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("reference")
    ap.add_argument("--gguf-file")
    args = ap.parse_args()
    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    reference = AutoTokenizer.from_pretrained(args.reference, **kwargs)
    ours = Tokenizer.from_file(f"{args.ours}/tokenizer.json")
    differ = 0
    for text in TEXTS:
        a = reference(text, add_special_tokens=False)["input_ids"]
        b = ours.encode(text, add_special_tokens=False).ids
        same = a == b
        differ += not same
        print(f"{'same' if same else 'DIFFERENT'}  {len(a):3} tokens  {text[:48]!r}")
        if not same:
            print("  reference:", a)
            print("  ours:     ", b)
    print(f"{len(TEXTS) - differ} of {len(TEXTS)} identical")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
