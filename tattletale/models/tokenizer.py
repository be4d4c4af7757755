"""Tokenizers: HF `tokenizer.json` files, or built from GGUF metadata (no second download), plus
chat templates rendered in a sandbox and streaming detokenization that never splits UTF-8."""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from pathlib import Path

from .config import ModelFileError, UnsupportedModel

# GGUF `tokenizer.ggml.pre` → the split regex of that pre-tokenizer (None: GPT-2's, from ByteLevel)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
               "smollm": None, "gpt2": None, "default": None}
_CONTROL, _USER_DEFINED = 3, 4


class Tokenizer:
    """A `tokenizers.Tokenizer` with the model's special tokens."""

    def __init__(self, tok, bos_token: str | None, eos_token: str | None, add_bos: bool):
        self.tok = tok
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def token_id(self, text: str | None) -> int | None:
        return None if text is None else self.tok.token_to_id(text)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        bos = self.token_id(self.bos_token)
        if add_special and self.add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns a growing list of ids into text pieces; holds back an incomplete UTF-8 sequence
    (decoded as U+FFFD) until the tokens that complete it arrive."""

    def __init__(self, tokenizer: Tokenizer):
        self.t = tokenizer
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already returned

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.t.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece = text[self.emitted:]
        self.emitted = len(text)
        if len(self.ids) > 64:  # keep decoding cost bounded: restart from the last few tokens
            tail = self.ids[-8:]
            self.ids = tail
            self.emitted = len(self.t.decode(tail))
        return piece


def tokenizer_from_hf(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTok

    from .loader import read_json

    f = path / "tokenizer.json"
    if not f.exists():
        raise UnsupportedModel(f"{path} has no tokenizer.json (tattletale reads HF fast tokenizers)")
    try:
        tok = HFTok.from_file(str(f))
    except Exception as exc:  # tokenizers raises plain Exceptions for malformed JSON
        raise ModelFileError(f"cannot read {f}: {exc}") from None
    cfg_path = path / "tokenizer_config.json"
    cfg = read_json(cfg_path) if cfg_path.exists() else {}

    def content(v):
        return v.get("content") if isinstance(v, dict) else v

    bos, eos = content(cfg.get("bos_token")), content(cfg.get("eos_token"))
    add_bos = bool(cfg.get("add_bos_token", False))
    # tokenizer.json post-processors add BOS for some models; we add it ourselves instead
    tok.post_processor = None
    return Tokenizer(tok, bos, eos, add_bos)


def tokenizer_from_gguf(model) -> Tokenizer:
    """Build a byte-level BPE tokenizer from `tokenizer.ggml.*` metadata."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    kind = model.field("tokenizer.ggml.model")
    tokens = list(model.field("tokenizer.ggml.tokens") or [])
    if kind is None or not tokens:
        raise ModelFileError(f"{model.path} has no tokenizer (tokenizer.ggml.* metadata)")
    if kind != "gpt2":
        raise UnsupportedModel(f"GGUF tokenizer model {kind!r} is not supported yet (byte-level "
                               f"BPE, 'gpt2', is)")
    types = list(model.field("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in model.field("tokenizer.ggml.merges") or []]
    pre = model.field("tokenizer.ggml.pre") or "default"
    vocab = {t: i for i, t in enumerate(tokens)}
    if pre not in _PRE_SPLITS:
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is unknown to tattletale; splitting text like "
                      f"GPT-2 does, which may tokenize differently from the model's own tokenizer",
                      stacklevel=2)
    split = _PRE_SPLITS.get(pre, None)
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=split is _LLAMA3_SPLIT)
    tok = HFTok(bpe)
    if split is None:
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if pre == "smollm":
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    else:
        steps = [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=ty == _CONTROL, normalized=False)
                for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)]
    tok.add_special_tokens([a for a in specials if a.special])
    tok.add_tokens([a for a in specials if not a.special])

    def name(key):
        i = model.field(key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    add_bos = bool(model.field("tokenizer.ggml.add_bos_token") or False)
    return Tokenizer(tok, name("tokenizer.ggml.bos_token_id"), name("tokenizer.ggml.eos_token_id"),
                     add_bos)


def render_chat(template: str, messages: list[dict], tokenizer: Tokenizer,
                add_generation_prompt: bool = True) -> str:
    """Render a chat template from a model file in a sandbox (templates are untrusted input)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, indent=None):
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
