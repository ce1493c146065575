#!/usr/bin/env python3
"""A large SFT set for the data-at-any-size benchmarks (docs/PERFORMANCE.md).

Repeats the alpaca-format sets of ../shared/data (alpaca_en_demo, alpaca_zh_demo,
identity) until --records records, each copy made distinct by appending " (copy N)" to its
responses, so that no cache of whole records can stand in for the work. Writes
OUT/big.jsonl (JSON Lines) or OUT/big.json (one JSON array, --json) and
OUT/dataset_info.json naming it `big`.

    python3 scripts/make_big_sft.py --records 1000000 --out /tmp/big1m
    ferrotune data prepare --dataset big --dataset-dir /tmp/big1m \
        --tokenizer ../shared/tokenizers/qwen3 --cache-dir /tmp/big1m-cache

Check the disk first: 1M records take about 1 GB, 10M about 10 GB.
"""

import argparse
import json
import os

SETS = ["alpaca_en_demo.json", "alpaca_zh_demo.json", "identity.json"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true", help="one JSON array instead of JSON Lines")
    p.add_argument(
        "--shared",
        default=os.environ.get("FERROTUNE_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")),
    )
    a = p.parse_args()
    base = []
    for name in SETS:
        with open(os.path.join(a.shared, "data", name), encoding="utf-8") as f:
            base.extend(json.load(f))
    os.makedirs(a.out, exist_ok=True)
    name = "big.json" if a.json else "big.jsonl"
    with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
        if a.json:
            f.write("[\n")
        for i in range(a.records):
            record = dict(base[i % len(base)])
            record["output"] = f"{record['output']} (copy {i // len(base)})"
            line = json.dumps(record, ensure_ascii=False)
            if a.json:
                f.write(line + (",\n" if i + 1 < a.records else "\n"))
            else:
                f.write(line + "\n")
        if a.json:
            f.write("]\n")
    with open(os.path.join(a.out, "dataset_info.json"), "w", encoding="utf-8") as f:
        json.dump({"big": {"file_name": name}}, f, indent=2)


if __name__ == "__main__":
    main()
