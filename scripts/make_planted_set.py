#!/usr/bin/env python3
"""The planted set for `ferrotune data check`: clean alpaca rows from ../shared/data with
known defects planted among them, and the truth file that says which row has which.

    python3 scripts/make_planted_set.py [--shared ../shared] [--out crates/ferrotune-data/tests/data/planted]

writes planted.json (alpaca records) and truth.json:

    {"clean": [row, ...],
     "planted": [{"row": 17, "class": "near_duplicate", "partner": 3}, ...]}

Clean rows are chosen by rules of this script, not by ferrotune's checks (so the false
positive rate is measured, not built in): English rows of alpaca_en_demo and Chinese rows
of alpaca_zh_demo whose prompt and response are in one script, with responses of 3+ words
(8+ characters in Chinese), no braces, no markup that looks like a template token, no
translation task, no response that contains a line of its prompt, and no repeated prompt
or response. Every class gets 40 planted rows, each made from a row that is not in the
clean set (duplicates and conflicting answers copy a clean row: their partner).

The classes are the checks' names. Deterministic (seeded); run by hand, the output is
committed.
"""

import argparse
import json
import os
import random
import re

PER_CLASS = 40
CLEAN_EN = 500
CLEAN_ZH = 500

CONTROL = ["<|im_end|>", "<|im_start|>", "</s>", "<|eot_id|>", "[INST]", "<|endoftext|>"]
PLACEHOLDERS = ["{{name}}", "{{author}}", "{{ company }}", "{{model_name}}"]
SHORT = ["Yes.", "No.", "42", "True", "Paris.", "是。", "好", "Maybe"]


def han_share(text):
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if "\u4e00" <= c <= "\u9fff") / len(letters)


def words(text):
    return re.findall(r"[A-Za-z0-9']+|[\u4e00-\u9fff]", text)


def prompt_of(r):
    return r["instruction"] + ("\n" + r["input"] if r["input"] else "")


def is_clean(r, zh):
    p, o = prompt_of(r), r["output"]
    text = p + "\n" + o
    if any(ch in text for ch in "{}<>[]") or "translat" in text.lower() or "翻译" in text:
        return False
    if zh:
        if han_share(p) < 0.8 or han_share(o) < 0.8 or len(o) < 8:
            return False
    else:
        if han_share(text) > 0 or not text.isascii() or len(words(o)) < 3:
            return False
    lines = [l.strip().lower() for l in p.split("\n") if l.strip()]
    if any(l in o.lower() for l in lines):
        return False
    return True


def dedupe(rows):
    seen_p, seen_o, out = set(), set(), []
    for r in rows:
        kp = " ".join(prompt_of(r).lower().split())
        ko = " ".join(r["output"].lower().split())
        if kp in seen_p or ko in seen_o:
            continue
        seen_p.add(kp)
        seen_o.add(ko)
        out.append(r)
    return out


def edit_slightly(text, rng, zh):
    """One word (or character) replaced, far enough from the ends."""
    if zh:
        chars = list(text)
        spots = [i for i, c in enumerate(chars) if "\u4e00" <= c <= "\u9fff"]
        i = spots[len(spots) // 2]
        chars[i] = "的" if chars[i] != "的" else "了"
        return "".join(chars)
    tokens = text.split(" ")
    i = len(tokens) // 2
    tokens[i] = "really" if tokens[i] != "really" else "truly"
    return " ".join(tokens)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.environ.get("FERROTUNE_SHARED", "../shared"))
    ap.add_argument("--out", default="crates/ferrotune-data/tests/data/planted")
    a = ap.parse_args()
    rng = random.Random(20261205)
    load = lambda name: json.load(open(os.path.join(a.shared, "data", name), encoding="utf-8"))
    en = dedupe([r for r in load("alpaca_en_demo.json") if is_clean(r, False)])
    zh = dedupe([r for r in load("alpaca_zh_demo.json") if is_clean(r, True)])
    rng.shuffle(en)
    rng.shuffle(zh)
    clean = en[:CLEAN_EN] + zh[:CLEAN_ZH]
    spare_en, spare_zh = en[CLEAN_EN:], zh[CLEAN_ZH:]
    assert len(spare_en) >= 5 * PER_CLASS and len(spare_zh) >= 3 * PER_CLASS, (len(spare_en), len(spare_zh))
    rows = [dict(r) for r in clean]
    kinds = ["en"] * len(en[:CLEAN_EN]) + ["zh"] * len(zh[:CLEAN_ZH])
    planted = []
    spares = {"en": iter(spare_en), "zh": iter(spare_zh)}

    def spare(i):
        kind = "zh" if i % 3 == 2 else "en"
        return dict(next(spares[kind])), kind

    def plant(row, cls, partner=None):
        entry = {"class": cls, "row": None}
        if partner is not None:
            entry["partner"] = partner
        planted.append((row, entry))

    long_clean = [i for i, r in enumerate(clean) if len(words(r["output"])) >= 40]
    for i in range(PER_CLASS):
        # Exact duplicates: the same record, half of them with other case and spacing.
        j = rng.randrange(len(clean))
        r = dict(clean[j])
        if i % 2:
            r["output"] = "  " + r["output"].upper() if kinds[j] == "en" else r["output"] + "  "
        plant(r, "exact_duplicate", j)
        # Near duplicates: one word changed in a long response.
        j = long_clean[rng.randrange(len(long_clean))]
        r = dict(clean[j])
        r["output"] = edit_slightly(r["output"], rng, kinds[j] == "zh")
        plant(r, "near_duplicate", j)
        # Conflicting answers: a clean row's prompt with the answer of a row that is not in
        # the set (another clean row's answer would make a near duplicate of that row).
        j = rng.randrange(len(clean))
        r = dict(clean[j])
        r["output"] = next(spares[kinds[j]])["output"]
        plant(r, "conflicting_answer", j)
        # Empty responses.
        r, _ = spare(i)
        r["output"] = ["", " ", "\n", "  \n "][i % 4]
        plant(r, "empty_response")
        # Short responses: one word.
        r, _ = spare(i)
        r["output"] = SHORT[i % len(SHORT)]
        plant(r, "short_response")
        # Responses that repeat the prompt: the whole prompt, or the instruction line
        # when an input follows, or the prompt with a word or two added.
        r, _ = spare(i)
        if i % 3 == 0:
            r["output"] = prompt_of(r)
        elif i % 3 == 1:
            if not r["input"]:
                r["input"] = "Answer in one paragraph."
            r["output"] = r["instruction"]
        else:
            r["output"] = r["instruction"] + " Sure."
        plant(r, "repeats_prompt")
        # Unreplaced placeholders.
        r, kind = spare(i)
        ph = PLACEHOLDERS[i % len(PLACEHOLDERS)]
        r["output"] = (f"我是 {ph}。" if kind == "zh" else f"I am {ph}. ") + r["output"]
        plant(r, "placeholder")
        # Control tokens inside the text.
        r, _ = spare(i)
        tok = CONTROL[i % len(CONTROL)]
        cut = len(r["output"]) // 2
        if i % 4 == 3:
            r["instruction"] = r["instruction"] + tok
        else:
            r["output"] = r["output"][:cut] + tok + r["output"][cut:]
        plant(r, "control_token")
        # Mixed languages: an English prompt answered in Chinese, or the other way round.
        if i % 2:
            r = dict(next(spares["en"]))
            r["output"] = next(spares["zh"])["output"]
        else:
            r = dict(next(spares["zh"]))
            r["output"] = next(spares["en"])["output"]
        plant(r, "language_mix")

    # Planted rows go at random places after the clean rows they copy.
    order = list(range(len(planted)))
    rng.shuffle(order)
    truth = {"clean": [], "planted": []}
    out_rows = []
    positions = sorted(rng.sample(range(len(rows) + len(planted)), len(planted)))
    clean_iter, planted_iter = iter(range(len(rows))), iter(order)
    new_index = {}
    for k in range(len(rows) + len(planted)):
        if positions and positions[0] == k:
            positions.pop(0)
            p = next(planted_iter)
            row, entry = planted[p]
            entry["row"] = k
            out_rows.append(row)
            truth["planted"].append(entry)
        else:
            c = next(clean_iter)
            new_index[c] = k
            out_rows.append(rows[c])
            truth["clean"].append(k)
    for entry in truth["planted"]:
        if "partner" in entry:
            entry["partner"] = new_index[entry["partner"]]
    truth["planted"].sort(key=lambda e: e["row"])
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "planted.json"), "w", encoding="utf-8") as f:
        json.dump(out_rows, f, ensure_ascii=False, indent=1)
    with open(os.path.join(a.out, "truth.json"), "w", encoding="utf-8") as f:
        json.dump(truth, f, ensure_ascii=False, indent=1)
    print(f"{len(out_rows)} rows: {len(truth['clean'])} clean, {len(truth['planted'])} planted -> {a.out}")


if __name__ == "__main__":
    main()
