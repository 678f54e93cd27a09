"""qtool's tokenizer.json implementation against Hugging Face `tokenizers`, the reference.

For SmolLM2's tokenizer.json (when given) and for small tokenizers trained here by `tokenizers`
itself (byte-level BPE with the GPT-2, Llama 3 and Qwen 2 pre-tokenizers, SentencePiece-style
BPE with byte fallback, Unigram with Metaspace), every text below and thousands of seeded random
Unicode strings are encoded by both; the ids must be identical, and so must the decoded text.
qtool runs through `qtool tokenize TOKENIZER --lines FILE --json OUT`.

usage: check_tokenizer.py QTOOL WORKDIR [--smollm2 DIR] [--calib TEXT] [--random N]
"""

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

TEXTS = [
    "Hello world! Once upon a time, there was a little dog.",
    "CJK: 你好，世界。日本語のテキストです。한국어 문장입니다.",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ❤️‍🔥",
    "Combining marks: e\u0301 a\u0308 n\u0303 \u0915\u093f \u1e9b\u0323",
    "Right to left: שלום עולם — مرحبا بالعالم ١٢٣",
    "Whitespace runs:   three  two\t\ttabs\n\n\nnewlines \r\n crlf \u00a0nbsp\u3000ideographic  ",
    "Digits: 0 12 345 6789 1234567890 3.14159 1e-10 ١٢٣٤ ²³",
    "def f(x):\n    return x**2 + 1  # comment\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "Contractions: I'm, you're, it's, we've, they'll, he'd; I'M, YOU'RE, IT'S.",
    "Mixed: naïve café résumé Œuvre straße ǅ ﬁ ﬀ Å Å",
    "",
    " ",
    "\n",
    "a",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>text<|im_end|>",
]

# Code point ranges the random strings draw from, weighted toward the scripts above.
RANGES = [
    (0x20, 0x7E, 30), (0x09, 0x0D, 4), (0xA0, 0x24F, 6), (0x300, 0x36F, 4), (0x370, 0x52F, 3),
    (0x590, 0x6FF, 4), (0x900, 0x97F, 2), (0x2000, 0x206F, 3), (0x3000, 0x30FF, 3),
    (0x4E00, 0x9FFF, 6), (0xAC00, 0xD7A3, 2), (0xFF00, 0xFFEF, 1), (0x1F300, 0x1FAFF, 5),
    (0x10000, 0x10FFFF, 1), (0x0, 0xFFFF, 2),
]


def random_text(rng):
    weights = [w for _, _, w in RANGES]
    out = []
    for _ in range(rng.randint(0, 40)):
        lo, hi, _ = rng.choices(RANGES, weights)[0]
        c = rng.randint(lo, hi)
        if 0xD800 <= c <= 0xDFFF or c == 0:
            c = 0x20
        out.append(chr(c))
    return "".join(out)


def trained(corpus, name):
    """A small tokenizer of style `name`, trained on `corpus` by tokenizers."""
    specials = ["<unk>", "<s>", "</s>", "<|special|>"]
    if name == "unigram-metaspace":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=specials,
                                          unk_token="<unk>")
    elif name == "bpe-metaspace-bytefallback":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([
            decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
            decoders.Strip(" ", 1, 0)])
        bytes_ = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials + bytes_)
    else:
        # Byte-level BPE with the pre-tokenizer of GPT-2, Llama 3 or Qwen 2.
        patterns = {
            "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                      r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                     r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        }
        tok = Tokenizer(models.BPE(ignore_merges=name == "llama3"))
        if name == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            if name == "qwen2":
                tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(patterns[name]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def check(qtool, workdir, name, path, texts):
    ref = Tokenizer.from_file(str(path))
    lines = workdir / f"{name}.jsonl"
    lines.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    out = workdir / f"{name}.out.json"
    run = subprocess.run([qtool, "tokenize", str(path), "--lines", str(lines), "--json", str(out)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        print(f"FAIL {name}: qtool exited {run.returncode}: {run.stderr.strip()}")
        return False
    got = json.loads(out.read_text(encoding="utf-8"))
    # Empty lines are skipped by qtool; the texts here hold none.
    assert len(got) == len(texts), (len(got), len(texts))
    bad_ids = bad_text = 0
    for text, g in zip(texts, got):
        want = ref.encode(text, add_special_tokens=False).ids
        if g["ids"] != want:
            bad_ids += 1
            if bad_ids <= 3:
                print(f"  {name}: ids differ for {text!r}:\n    qtool      {g['ids']}\n"
                      f"    tokenizers {want}")
            continue
        if g["decoded"] != ref.decode(want, skip_special_tokens=False):
            bad_text += 1
            if bad_text <= 3:
                print(f"  {name}: decoded text differs for {text!r}: {g['decoded']!r} vs "
                      f"{ref.decode(want, skip_special_tokens=False)!r}")
    ok = bad_ids == 0 and bad_text == 0
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {len(texts)} texts, {bad_ids} with other ids, "
          f"{bad_text} decoded differently")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qtool")
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--smollm2", type=Path, help="directory with SmolLM2's tokenizer.json")
    ap.add_argument("--calib", type=Path, help="training text for the small tokenizers")
    ap.add_argument("--random", type=int, default=3000, help="random strings per tokenizer")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    # JSON Lines keeps one string per line; an empty string is its own case, kept out of the file.
    texts = [t for t in TEXTS if t] + [t for t in (random_text(rng) for _ in range(args.random))
                                       if t]
    corpus = TEXTS * 20
    if args.calib:
        corpus += args.calib.read_text(encoding="utf-8").split("\n")
    ok = True
    if args.smollm2:
        ok &= check(args.qtool, args.workdir, "smollm2", args.smollm2 / "tokenizer.json", texts)
    for name in ["gpt2", "llama3", "qwen2", "bpe-metaspace-bytefallback", "unigram-metaspace"]:
        path = args.workdir / f"{name}.json"
        # The Unigram trainer needs every character of its corpus in the vocabulary: it trains
        # without the random strings, which then exercise its unknown-character path.
        extra = [] if name.startswith("unigram") else [random_text(rng) for _ in range(200)]
        tok = trained(corpus + extra, name)
        tok.add_special_tokens(["<|special|>"])
        tok.save(str(path))
        ok &= check(args.qtool, args.workdir, name, path, texts + ["a<|special|>b <|special|> c"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
