"""Claim: encode_conversation tokenizes only the text and splices image pads with numpy, so its cost
does not grow with image size; tokenizing the pad-expanded text (the naive way) does.

Measures samples/s of `encode_conversation` (qwen2vl, shipped tokenizer) on 2000 generated
LLaVA-style records (1 image, 1-3 turns), with 64 and 1280 image tokens per image, against rendering
the same ChatML text with k literal <|image_pad|> tokens and tokenizing it whole. Single process.

    .venv/bin/python benchmarks/bench_templates.py
"""

from __future__ import annotations

import random
import time

from mmdata.text.templates import encode_conversation
from mmdata.text.tokenizer import load_tokenizer

WORDS = ("a man woman dog cat red blue car street table sitting standing near the with on in of and "
         "two small large white black food pizza plate kitchen window tree park bench train bus").split()


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def sent(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."

    out = []
    for i in range(n):
        conv = [{"from": "human", "value": "<image>\n" + sent(rng.randint(6, 14)).rstrip(".") + "?"},
                {"from": "gpt", "value": " ".join(sent(rng.randint(8, 20)) for _ in range(rng.randint(1, 4)))}]
        for _ in range(rng.randint(0, 2)):
            conv += [{"from": "human", "value": sent(rng.randint(5, 12))}, {"from": "gpt", "value": sent(rng.randint(5, 30))}]
        out.append({"id": str(i), "conversations": conv})
    return out


def naive(rec: dict, tok, k: int) -> list[int]:
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for t in rec["conversations"]:
        role = "user" if t["from"] == "human" else "assistant"
        v = t["value"].replace("<image>", "<|vision_start|>" + "<|image_pad|>" * k + "<|vision_end|>")
        text += f"<|im_start|>{role}\n{v}<|im_end|>\n"
    return tok.encode(text)


def rate(fn, recs) -> float:
    fn(recs[0])
    t0 = time.perf_counter()
    for r in recs:
        fn(r)
    return len(recs) / (time.perf_counter() - t0)


def main() -> None:
    tok = load_tokenizer(None)
    recs = records(2000)
    print("image_tokens  encode_conversation (samples/s)  naive expanded-text tokenize (samples/s)")
    for k in (64, 1280):
        a = rate(lambda r: encode_conversation(r, tok, "qwen2vl", [k]), recs)
        b = rate(lambda r: naive(r, tok, k), recs)
        print(f"{k:>12}  {a:>31,.0f}  {b:>41,.0f}")
    # sanity: both give the same ids
    e = encode_conversation(recs[0], tok, "qwen2vl", [64])
    assert e.input_ids.tolist() == naive(recs[0], tok, 64)


if __name__ == "__main__":
    main()
