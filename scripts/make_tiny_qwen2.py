"""Build a tiny, randomly initialised Qwen2 model, its tokenizer and a chat dataset, offline.

Why: the real ``swift sft`` / ``swift export`` must be exercised end to end (progress lines,
checkpoints, graceful stop, resume, LoRA merge) on machines that reach no model hub and
may have no GPU. A Qwen2 of a few hundred thousand parameters trains for dozens of steps
on a CPU in seconds, and ms-swift treats it like any Qwen2 (``--model_type qwen2
--template qwen``).

Run it with the python of ``.venv-swift`` (it needs ``transformers``, ``tokenizers`` and
``torch``, which the project's own venv does not have)::

    .venv-swift/bin/python scripts/make_tiny_qwen2.py OUT_DIR [--samples 64]

It writes ``OUT_DIR/model`` (config, safetensors weights, tokenizer with a ChatML chat
template) and ``OUT_DIR/train.jsonl`` (``{"messages": [...]}`` lines), and prints both
paths as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

#: ChatML, as Qwen2 uses it; ms-swift's ``qwen`` template writes the same markers itself.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = [
    *("red", "green", "blue", "cat", "dog", "bird"),
    *("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("what", "is", "the", "colour", "of", "sky", "grass", "sea", "count", "to", "say"),
    *("hello", "world", "yes", "no", "please", "thanks"),
]


def _sample(rng: random.Random) -> dict[str, object]:
    """A question and an answer the tiny model can learn something of (a fixed mapping)."""
    start = rng.randint(1, 5)
    question = f"count from {_WORDS[6 + start]} please"
    answer = " ".join(_WORDS[6 + i] for i in range(start, start + 4))
    return {
        "messages": [
            {"role": "system", "content": "You are a tiny test model."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    }


def build_tokenizer(corpus: list[str]) -> object:
    """A byte-level BPE (every byte has a token, so no text is ever unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",  # noqa: S106 - a token, not a password
        pad_token="<|endoftext|>",  # noqa: S106
        additional_special_tokens=["<|im_start|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build(out_dir: Path, samples: int, seed: int = 0) -> dict[str, str]:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    rng = random.Random(seed)
    torch.manual_seed(seed)
    rows = [_sample(rng) for _ in range(samples)]
    corpus = [
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        for row in rows
        for m in row["messages"]  # type: ignore[attr-defined]
    ] + [" ".join(_WORDS)]
    tokenizer = build_tokenizer(corpus)
    vocab_size = len(tokenizer)  # type: ignore[arg-type]
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),  # type: ignore[attr-defined]
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),  # type: ignore[attr-defined]
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model_dir = out_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)  # type: ignore[attr-defined]
    GenerationConfig(
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=16,
    ).save_pretrained(model_dir)
    dataset = out_dir / "train.jsonl"
    with dataset.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return {"model": str(model_dir.resolve()), "dataset": str(dataset.resolve())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = build(args.out_dir, args.samples, args.seed)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
