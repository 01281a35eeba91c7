"""Build Parlour's demo model locally, with no download.

    python -m modules.demo_model                  # models/parlour-demo (Llama, ~4M params, a few minutes)
    python -m modules.demo_model --arch gpt2      # models/parlour-demo-gpt2 (GPT2LMHeadModel path)
    python -m modules.demo_model --size micro     # untrained, built in seconds (tests)
    python -m modules.demo_model --size micro --tokenizer sentencepiece   # a Llama-2-style tokenizer.model

The tokenizer is a byte-level BPE trained on text every Python install has (the standard library's
sources) plus generated ChatML dialogues, so the model can greet and answer a few simple questions.
With `--tokenizer sentencepiece` it is a sentencepiece BPE (byte fallback, "▁" for spaces) saved as
`tokenizer.model` alone, as many real models ship it: Transformers converts it when it loads, which
is the path those models take (constrained output, for one, must read its vocabulary right).
Training uses a fixed seed and a fixed number of steps: the same machine builds the same model.

The demo model also thinks before it answers, as 2026's reasoning models do: its chat template opens
a `<think>` block in the generation prompt (as DeepSeek-R1's distills do) and, with
`enable_thinking: false`, closes it empty at once (Qwen3's switch). Its training replies carry a short
thought before the answer, so a new user sees the Chat tab's reasoning block on the built-in model.
Earlier turns in the history are rendered without their thinking (the Hugging Face convention).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from modules.templates import CHATML

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
#: reasoning markers: added tokens that decode as text (not special), as Qwen3 has them
THINK_TOKENS = ["<think>", "</think>"]
#: ChatML with a reasoning switch: the generation prompt opens the thought (or closes it empty when
#: enable_thinking is false); an assistant turn in the history is its answer only. The closed prompt
#: ends with one newline, not the two its training replies have there: the byte-level pre-tokenizer
#: makes a prompt's final "\n\n" one token, which training never shows before an answer (there it is
#: "\n", "\n", "Hello"); on some CPUs' numerics the model then wrote "</think>" again. With one, the
#: model writes the second newline itself, as in training.
REASONING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n' }}"
    "{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)


@dataclass(frozen=True)
class Size:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    positions: int
    steps: int
    batch: int
    seq: int
    corpus_chars: int


SIZES = {
    # ~4M parameters; about three minutes of training on two cores. Every width is a multiple of 64:
    # bitsandbytes' CPU 4-bit kernels refuse other sizes.
    "demo": Size(4096, 256, 704, 4, 4, 2, 512, 400, 16, 128, 6_000_000),
    # Tiny and barely trained (seconds): for tests that need a real model, not a good one.
    "micro": Size(512, 64, 128, 2, 4, 2, 2048, 200, 8, 64, 400_000),
    # ~400M parameters, untrained (build with --steps 0): big enough that a GPU benchmark of bitsandbytes
    # 8-bit/4-bit measures the kernels, not Python overhead (bench/device_check.py).
    "wide": Size(4096, 1536, 4096, 16, 12, 4, 2048, 0, 8, 128, 400_000),
}

_GREETINGS_IN = ["Hello", "Hi", "Hey", "Hello!", "Hi!", "Hey there", "Good morning", "Good evening",
                 "Hi, how are you?", "Hello, how are you?", "Hey, what's up?", "Greetings", "hello", "hi"]
_GREETINGS_OUT = ["Hello! How can I help you today?", "Hi there! What can I do for you?",
                  "Hello! It is nice to meet you.", "Hi! I am doing well, thank you. How can I help?",
                  "Hello! What would you like to talk about?", "Hey! How can I help you today?"]
_FACTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What color is the sky?", "The sky is blue on a clear day."),
    ("What color is grass?", "Grass is green."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What do bees make?", "Bees make honey."),
    ("What is Python?", "Python is a programming language that is easy to read."),
    ("Who are you?", "I am a small demo assistant running on your own computer."),
    ("What is your name?", "I am the Parlour demo model."),
    ("Thank you!", "You are welcome!"),
    ("Thanks", "You are welcome! Anything else?"),
    ("Goodbye", "Goodbye! Have a nice day."),
    ("Bye", "Bye! Have a great day."),
    ("Tell me a joke.", "Why did the computer go to sleep? It was tired of working."),
    ("Can you help me?", "Of course! What do you need help with?"),
    ("What is two plus two?", "Two plus two is four."),
    ("What is one plus one?", "One plus one is two."),
]
_SYSTEMS = ["", "You are a helpful assistant.", "You are a friendly assistant."]
# The demo also meets the system prompt a new user's first chat has: the default character's context
# (characters/Assistant.yaml, in instruct mode), so the built-in model answers well as it is set up.
_CHARACTER_SYSTEMS = [
    "The following is a conversation with Assistant, a helpful, knowledgeable assistant. Assistant answers "
    "the user's questions clearly and briefly, and says so when it does not know something.",
    "The following is a conversation with Assistant, a helpful, knowledgeable assistant. Assistant answers "
    "You's questions clearly and briefly, and says so when it does not know something.",
]


def _thought(question: str, greeting: bool) -> str:
    if greeting:
        return "The user greets me. I should greet them back and offer to help."
    return f"The user asks: {question} I know this, so I answer in one sentence."


def _dialogue(rng: random.Random, reasoning: bool = False) -> str:
    """A ChatML dialogue. With `reasoning`, the last reply opens with a thought (or, a third of the time,
    an empty thought, as the template writes it when thinking is switched off)."""
    turns = []
    system = rng.choice(_SYSTEMS + _CHARACTER_SYSTEMS if reasoning else _SYSTEMS)
    if system:
        turns.append(("system", system))
    count = rng.randint(1, 3)
    for i in range(count):
        greeting = i == 0 and rng.random() < 0.5
        question, answer = (rng.choice(_GREETINGS_IN), rng.choice(_GREETINGS_OUT)) if greeting else rng.choice(_FACTS)
        if reasoning and i == count - 1:  # earlier replies appear without thinking, as the template renders them
            thought = _thought(question, greeting) if rng.random() < 2 / 3 else ""
            answer = f"<think>\n{thought}\n</think>\n\n{answer}" if thought else f"<think>\n\n</think>\n\n{answer}"
        turns += [("user", question), ("assistant", answer)]
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


def _stdlib_text(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= limit:
            break
    return texts


def build_tokenizer(texts: list[str], vocab: int, reasoning: bool = False):
    """Train a byte-level BPE on `texts` and wrap it as a Transformers fast tokenizer (with `reasoning`,
    the think markers as tokens of their own and the template that opens a thought)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token=None)
    fast.chat_template = CHATML
    if reasoning:
        fast.add_tokens(THINK_TOKENS)  # not special: they decode as text, where the pipeline finds them
        fast.chat_template = REASONING_TEMPLATE
    return fast


def build_sentencepiece_tokenizer(texts: list[str], vocab: int, folder: Path):
    """Train a sentencepiece BPE on `texts`, write `tokenizer.model` and its config into `folder`, and load it
    the way a model folder is loaded (Transformers converts it to a fast tokenizer)."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    model = io.BytesIO()
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, user_defined_symbols=SPECIAL_TOKENS[1:3],
        normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, max_sentence_length=100_000, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "extra_special_tokens": [*SPECIAL_TOKENS[1:3], "</s>"]}))
    (folder / "chat_template.jinja").write_text(CHATML)
    return AutoTokenizer.from_pretrained(folder)


def _make_model(arch: str, size: Size, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        config = LlamaConfig(hidden_size=size.hidden, intermediate_size=size.intermediate,
                             num_hidden_layers=size.layers, num_attention_heads=size.heads,
                             num_key_value_heads=size.kv_heads, max_position_embeddings=size.positions,
                             tie_word_embeddings=True, **common)
        return LlamaForCausalLM(config)
    if arch == "gpt2":
        config = GPT2Config(n_embd=size.hidden, n_layer=size.layers, n_head=size.heads,
                            n_positions=size.positions, n_inner=size.intermediate, **common)
        return GPT2LMHeadModel(config)
    raise ValueError(f"unknown architecture {arch!r}: choose llama or gpt2")


def _batches(tokenizer, texts: list[str], rng: random.Random, size: Size, reasoning: bool = False):
    """Endless batches: 70% dialogues (what the chat needs), 30% standard-library code."""
    import torch

    code_ids: list[int] = []
    for text in texts:
        code_ids += tokenizer(text)["input_ids"] + [tokenizer.bos_token_id]
    while True:
        rows = []
        for _ in range(size.batch):
            if rng.random() < 0.7 or len(code_ids) <= size.seq:
                ids: list[int] = []
                while len(ids) < size.seq:
                    ids += tokenizer(_dialogue(rng, reasoning))["input_ids"]
                rows.append(ids[: size.seq])
            else:
                start = rng.randrange(0, len(code_ids) - size.seq)
                rows.append(code_ids[start : start + size.seq])
        yield torch.tensor(rows)


def build(out_dir: Path, arch: str = "llama", size_name: str = "demo", steps: int | None = None,
          seed: int = 0, progress: bool = True, tokenizer_kind: str = "bpe") -> Path:
    """Build, train and save a model into `out_dir`; return the folder."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    size = SIZES[size_name]
    steps = size.steps if steps is None else steps
    rng = random.Random(seed)
    torch.manual_seed(seed)
    texts = _stdlib_text(size.corpus_chars)
    reasoning = size_name == "demo"  # the test models stay plain ChatML
    if reasoning and tokenizer_kind != "bpe":
        raise ValueError("the demo model's thinking markers need the byte-level BPE tokenizer")
    dialogues = [_dialogue(rng, reasoning) for _ in range(3000 if size_name == "demo" else 300)]
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tokenizer_kind == "sentencepiece":
        tokenizer = build_sentencepiece_tokenizer(texts + dialogues, size.vocab, tmp)
        ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</s>")]
    elif tokenizer_kind == "bpe":
        tokenizer = build_tokenizer(texts + dialogues, size.vocab, reasoning)
        ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    else:
        raise ValueError(f"unknown tokenizer {tokenizer_kind!r}: choose bpe or sentencepiece")
    model = _make_model(arch, size, tokenizer)
    if steps:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
        batches = _batches(tokenizer, texts, rng, size, reasoning)
        bar = tqdm(range(steps), desc=f"training {out_dir.name}", disable=not progress, unit="step")
        for _ in bar:
            batch = next(batches)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.2f}")
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=ends, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id)
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    if tokenizer_kind == "bpe":  # the sentencepiece files are in the folder already, as a model would ship them
        tokenizer.save_pretrained(tmp)
    (tmp / "parlour-demo.json").write_text(json.dumps({"arch": arch, "size": size_name, "steps": steps,
                                                        "seed": seed, "tokenizer": tokenizer_kind}))
    # Rename last: a half-written folder is never mistaken for a model.
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def cache_key(arch: str, size_name: str, steps: int | None, seed: int, tokenizer_kind: str = "bpe") -> str:
    """What a build depends on: this file, its arguments and the libraries that write the files."""
    import hashlib

    import tokenizers
    import torch
    import transformers

    material = {"source": Path(__file__).read_text(encoding="utf-8"),
                "arguments": [arch, size_name, steps, seed, tokenizer_kind],
                "versions": [torch.__version__, transformers.__version__, tokenizers.__version__]}
    if tokenizer_kind == "sentencepiece":
        import sentencepiece

        material["versions"].append(sentencepiece.__version__)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def build_cached(out_dir: Path, cache_dir: Path, arch: str = "llama", size_name: str = "demo",
                 steps: int | None = None, seed: int = 0, progress: bool = True, tokenizer_kind: str = "bpe") -> Path:
    """`build`, or a copy of the same build made before (kept in `cache_dir`, keyed by `cache_key`).
    Training is deterministic, so a cached build is the model this machine would build again; CI and the
    test suite skip minutes of training this way. Entries are written atomically (renamed into place)."""
    import shutil
    import uuid

    key = cache_key(arch, size_name, steps, seed, tokenizer_kind)
    entry = cache_dir / f"{arch}-{size_name}-{tokenizer_kind}-{key}"
    if not (entry / "config.json").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = cache_dir / f".{entry.name}.{uuid.uuid4().hex}"
        build(scratch, arch=arch, size_name=size_name, steps=steps, seed=seed, progress=progress,
              tokenizer_kind=tokenizer_kind)
        try:
            scratch.rename(entry)  # another process that built the same entry first wins
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(entry, out_dir)
    return out_dir


def default_name(arch: str, size_name: str, tokenizer_kind: str = "bpe") -> str:
    name = "parlour-demo" if size_name == "demo" else f"parlour-{size_name}"
    name = name if arch == "llama" else f"{name}-{arch}"
    return name if tokenizer_kind == "bpe" else f"{name}-sp"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build Parlour's demo model locally (no download).")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--name", help="folder name inside --models-dir (default from arch and size)")
    parser.add_argument("--arch", choices=["llama", "gpt2"], default="llama")
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--steps", type=int, help="training steps (default: the size's)")
    parser.add_argument("--tokenizer", choices=["bpe", "sentencepiece"], default="bpe",
                        help="byte-level BPE (tokenizer.json) or sentencepiece (tokenizer.model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--cache", type=Path, help="keep builds here and reuse one made from the same code")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.models_dir / (args.name or default_name(args.arch, args.size, args.tokenizer))
    start = time.perf_counter()
    if args.cache:
        build_cached(out, args.cache, args.arch, args.size, args.steps, args.seed, tokenizer_kind=args.tokenizer)
    else:
        build(out, args.arch, args.size, args.steps, args.seed, tokenizer_kind=args.tokenizer)
    print(f"built {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
