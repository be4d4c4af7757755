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
# GGUF token types (llama.cpp's llama_token_type); 0 is "undefined", treated as normal
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED = 1, 2, 3, 4, 5
_MERGEABLE = (0, _NORMAL, _UNUSED)


class Tokenizer:
    """A `tokenizers.Tokenizer` with the model's special tokens."""

    def __init__(self, tok, bos_token: str | None, eos_token: str | None, add_bos: bool,
                 add_eos: bool = False):
        self.tok = tok
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos, self.add_eos = add_bos, add_eos

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
        eos = self.token_id(self.eos_token)
        if add_special and self.add_eos and eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
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
            self.ids = self.ids[self._restart():]
            self.emitted = len(self.t.decode(self.ids))
        return piece

    def _restart(self) -> int:
        """Where the kept tail starts: about 8 tokens back, at a token that begins a character.
        A tail opening inside a run of byte-fallback tokens (<0xXX>) would decode that whole run,
        later characters included, as U+FFFD."""
        n = len(self.ids)
        return next((k for k in range(n - 8, n - 24, -1)
                     if not self.t.decode(self.ids[k:]).startswith("\ufffd")), n - 8)


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
    """Build the tokenizer that `tokenizer.ggml.*` metadata describes: byte-level BPE ("gpt2") or
    SentencePiece BPE ("llama")."""
    kind = model.field("tokenizer.ggml.model")
    tokens = list(model.field("tokenizer.ggml.tokens") or [])
    if kind is None or not tokens:
        raise ModelFileError(f"{model.path} has no tokenizer (tokenizer.ggml.* metadata)")
    if kind not in ("gpt2", "llama"):
        raise UnsupportedModel(f"GGUF tokenizer model {kind!r} is not supported (byte-level BPE, "
                               f"'gpt2', and SentencePiece BPE, 'llama', are)")
    types = list(model.field("tokenizer.ggml.token_type") or [1] * len(tokens))

    def name(key: str) -> str | None:
        i = model.field(key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    def flag(key: str, default: bool) -> bool:
        value = model.field(key)
        return default if value is None else bool(value)

    bos, eos = name("tokenizer.ggml.bos_token_id"), name("tokenizer.ggml.eos_token_id")
    if kind == "gpt2":
        tok = _byte_level_bpe(model, tokens, types)
        return Tokenizer(tok, bos, eos, flag("tokenizer.ggml.add_bos_token", False))
    if len(types) != len(tokens):
        raise ModelFileError(f"{model.path}: tokenizer.ggml.token_type has {len(types)} entries for "
                             f"{len(tokens)} tokens")
    unk = name("tokenizer.ggml.unknown_token_id") or next(
        (t for t, ty in zip(tokens, types) if ty == _UNKNOWN), None)
    # llama.cpp's defaults for SentencePiece vocabularies: BOS and the dummy prefix on, EOS off
    tok = _sentencepiece_bpe(model, tokens, types, unk, flag("tokenizer.ggml.add_space_prefix", True))
    return Tokenizer(tok, bos, eos, flag("tokenizer.ggml.add_bos_token", True),
                     add_eos=flag("tokenizer.ggml.add_eos_token", False))


def _byte_level_bpe(model, tokens: list[str], types: list[int]):
    """Byte-level BPE from the file's merges, split like the `tokenizer.ggml.pre` it names."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    merges = [tuple(m.split(" ", 1)) for m in model.field("tokenizer.ggml.merges") or []]
    pre = model.field("tokenizer.ggml.pre") or "default"
    vocab = {t: i for i, t in enumerate(tokens)}
    if pre not in _PRE_SPLITS:
        warnings.warn(f"GGUF pre-tokenizer {pre!r} is unknown to tattletale; splitting text like "
                      f"GPT-2 does, which may tokenize differently from the model's own tokenizer",
                      stacklevel=3)
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
    _add_tokens(tok, tokens, types, special=(_CONTROL,))
    return tok


def _sentencepiece_bpe(model, tokens: list[str], types: list[int], unk: str | None,
                       space_prefix: bool):
    """SentencePiece BPE (Llama 2, Mistral 7B, TinyLlama) as a `tokenizers` BPE model.

    BPE rather than Unigram: SentencePiece's BPE encoder repeatedly joins the adjacent pair whose
    concatenation is the highest-scoring piece, which is exactly BPE with its merges ranked by
    the score of the piece they make; a Unigram model over the same scores would choose the
    segmentation with the best total score instead, a different tokenization. The file has no
    merges, so every split of a piece into two pieces becomes one (`_merges_by_score`).

    Spaces become "▁", and with `space_prefix` one "▁" starts each stretch of text between added
    tokens, as llama.cpp does: after BOS in a chat template ("<s>[INST]") that gives what the
    model's authors feed it (BOS, then the SentencePiece encoding of the text); SentencePiece
    itself, which reads user-defined tokens inside the text, adds none after those. A normalizer
    rather than a Metaspace pre-tokenizer adds it, because Metaspace adds none to text that
    already starts with a space, where SentencePiece still does ("  hi" is "▁▁▁hi").
    Characters without a piece become their UTF-8 bytes, <0xXX>; decoding joins those bytes
    back into text and drops the prefix's space at the start.
    """
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, normalizers

    scores = model.field("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise ModelFileError(f"{model.path}: a SentencePiece vocabulary needs tokenizer.ggml.scores, "
                             f"one per token (found {0 if scores is None else len(scores)} for "
                             f"{len(tokens)} tokens)")
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=_merges_by_score(tokens, scores, types),
                     unk_token=unk, fuse_unk=True, byte_fallback=True)
    tok = HFTok(bpe)
    steps = [normalizers.Replace(" ", "▁")]
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
        decode.append(decoders.Strip(" ", 1, 0))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence(decode)
    _add_tokens(tok, tokens, types, special=(_UNKNOWN, _CONTROL))
    return tok


def _merges_by_score(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's merge-by-score: each split (left, right) of a
    piece whose halves are both pieces, best piece first (ties: lower id, as files list pieces
    in the order they were learned), and among one piece's splits the longer left half first,
    as HF's converters order them. Only normal and unused pieces take part: SentencePiece never
    merges into or out of unknown, control, user-defined (matched whole) or byte pieces."""
    mergeable = {t for t, ty in zip(tokens, types) if ty in _MERGEABLE}
    ranked = []
    for i, (piece, score, ty) in enumerate(zip(tokens, scores, types)):
        if ty not in _MERGEABLE:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, i, -cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_tokens(tok, tokens: list[str], types: list[int], special: tuple[int, ...]) -> None:
    """Tokens of the `special` types become special added tokens (matched whole, skipped when
    decoding with skip_special); user-defined ones are matched whole but kept in decoded text."""
    from tokenizers import AddedToken

    added = [AddedToken(t, special=ty in special, normalized=False)
             for t, ty in zip(tokens, types) if t and (ty in special or ty == _USER_DEFINED)]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])


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
