"""The GGUF tokenizer (built from `tokenizer.ggml.*` metadata) against HF's tokenizer for the same
model, on the bundled SmolLM2-135M-Instruct GGUF: a multilingual, emoji, code and
whitespace-heavy corpus, a seeded fuzz corpus, streaming detokenization and the chat template.

HF's tokenizer is `AutoTokenizer.from_pretrained(dir, gguf_file=...)`, with one correction: its
GGUF converter builds every byte-level BPE with GPT-2's pre-tokenizer alone and drops the digit
split that `tokenizer.ggml.pre = "smollm"` stands for. SmolLM2's own tokenizer.json (and
llama.cpp's "smollm" pre-tokenizer) isolate every digit *before* the GPT-2 regex runs, so a
whitespace run in front of a number is one token there and two in the converted tokenizer
("x =    1": "   " + " " + "1" instead of "    " + "1"). The comparison therefore restores
SmolLM2's published pre-tokenizer (Digits then ByteLevel) on HF's converted tokenizer, keeping
HF's own vocabulary, merges, special tokens and decoder; a second test checks that the
uncorrected converter differs from us only at such places.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

from tattletale.models import open_model
from tattletale.models.tokenizer import render_chat

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

CORPUS = [
    # English, punctuation, contractions
    "The quick brown fox jumps over the lazy dog.",
    "Don't panic! It's fine, we'll see; they'd agree, I'm sure. IT'S LOUD, YOU'VE SEEN IT.",
    "Hello,world!...  What?!?  (parenthesized) [bracketed] {braced} — em-dash – en-dash …",
    # European scripts with diacritics, combining marks, ligatures
    "Ça va? Naïve café, Größe, smørrebrød, Ångström, Łódź, Dvořák, İstanbul, ﬁnancial ﬂow.",
    "e\u0301 (e + combining acute) vs \u00e9; A\u030a vs \u00c5; Z\u0335\u0341a\u0336l\u0337g\u0338o",
    "Ελληνικά: Καλημέρα κόσμε. Русский: Привет, мир! Ёлка. Українська: Ґанок, їжак.",
    # CJK, Korean, Thai, Arabic, Hebrew, Hindi and other Indic scripts
    "日本語のテキスト、カタカナとひらがな。東京は日本の首都です。",
    "中文文本：你好，世界！这是一个测试。繁體中文：電腦與網絡。",
    "한국어 텍스트: 안녕하세요, 세계! 서울은 한국의 수도입니다.",
    "ภาษาไทย: สวัสดีชาวโลก ยินดีต้อนรับ",
    "العربية: مرحبا بالعالم! هذه جملة للاختبار، مع أرقام ١٢٣٤٥٦٧٨٩٠ وعلامات.",
    "עברית: שלום עולם! זה מבחן.",
    "हिन्दी: नमस्ते दुनिया! यह एक परीक्षण है। संख्या: ०१२३४५६७८९",
    "বাংলা: হ্যালো বিশ্ব। தமிழ்: வணக்கம் உலகம். తెలుగు: హలో ప్రపంచం.",
    "Tiếng Việt có dấu: Xin chào thế giới. Türkçe: Merhaba dünya. Kiswahili: Habari dunia.",
    # emoji: skin tones, ZWJ sequences, flags, keycaps, variation selectors
    "Emoji: 😀😃😄 👍🏽👍🏿 👋🏻 family 👨‍👩‍👧‍👦 couple 👩‍❤️‍👨 rainbow 🏳️‍🌈 pirate 🏴‍☠️",
    "Flags 🇫🇷🇯🇵🇺🇸🇧🇷 keycaps 1️⃣2️⃣#️⃣ hearts ❤️🧡💛 ☺︎ vs ☺️ — 🧑‍💻 🧑🏾‍🚀 🐻‍❄️",
    # digits: runs, decimals, grouped, non-ASCII numerals, superscripts, roman numerals
    "Numbers: 0 1 12 123 1234 12345678901234567890 3.14159265 1,000,000 1e-9 0x1F 2⁸ ½ ² Ⅻ ٣",
    "Phone +1 (555) 010-9999, date 2024-02-29T23:59:59Z, version v1.2.3-rc.4, 10%, $5.99",
    "x =    1\ny =\t\t2\nz  =  3   4    5",
    # code
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\t// dot\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son';",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b\\n"}}',
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>  https://example.com/a?b=1&c=2#frag",
    # whitespace: tabs, newlines, CRLF, runs, leading/trailing, unicode spaces
    "   leading spaces and trailing spaces   ",
    "tabs\tand\t\ttabs\t\t\tend\t",
    "lines\n\nand\r\nCRLF\r\n\r\nand\n\n\n\nmany newlines\n",
    "multiple     spaces      between        words",
    "\n", "\t", " ", "  ", "\r\n", "     \n     \n",
    "no-break\u00a0space, em\u2003space, ideographic\u3000space, zero\u200bwidth, line\u2028sep",
    "control chars: \x00\x01\x07\x1b[0m\x7f",
    # special-token text
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>text<|im_start|><|im_end|><|im_start|> spaced <|im_end|> <|endoftext|>",
    "<|im_start partial <|im_end |> <|unknown|> <think>x</think>",
    "",
]


@pytest.fixture(scope="module")
def ours(bundled_gguf):
    return open_model(bundled_gguf).tokenizer()


@pytest.fixture(scope="module")
def hf_converted(bundled_gguf):
    """HF's tokenizer exactly as its GGUF converter builds it."""
    return transformers.AutoTokenizer.from_pretrained(bundled_gguf.parent, gguf_file=bundled_gguf.name)


@pytest.fixture(scope="module")
def hf(hf_converted):
    """HF's converted tokenizer (its `tokenizers` backend) with SmolLM2's published
    pre-tokenizer restored (see the module doc)."""
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(hf_converted.backend_tokenizer.to_str())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    return tok


def _hf_encode(hf, text: str) -> list[int]:
    """Token ids without BOS/EOS, from a transformers tokenizer or a `tokenizers` one."""
    if hasattr(hf, "backend_tokenizer"):
        return hf.encode(text, add_special_tokens=False)
    return hf.encode(text, add_special_tokens=False).ids


def _fuzz_corpus(n: int, seed: int = 0) -> list[str]:
    """Random strings over pieces chosen to hit pre-tokenizer boundaries: whitespace kinds and runs
    next to digits and non-ASCII numerals, contractions, combining marks, ZWJ/skin-tone emoji
    parts, special tokens glued to text."""
    pieces = list("abcXYZ019 .,!?'-_\t\n\r") + [
        "  ", "   ", "\u00a0", "\u3000", "\u2028", "é", "e\u0301", "日", "本", "ع", "न", "्", "٣", "²",
        "Ⅻ", "½", "ﬁ", "😀", "\u200d", "👩", "🏽", "\ufe0f", "🇫", "🇷", "'s", "'LL", "'ve", "\x00",
        "\x7f", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "123", "\n\n", " \n", "\t1"]
    rnd = random.Random(seed)
    return ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 24))) for _ in range(n)]


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_corpus_matches_hf(ours, hf, hf_converted, text):
    ids = ours.encode(text, add_special=False)
    assert ids == _hf_encode(hf, text)
    assert ours.decode(ids, skip_special=False) == text  # byte-level BPE round-trips exactly
    assert ours.decode(ids, skip_special=False) == hf_converted.decode(ids, skip_special_tokens=False)
    assert ours.decode(ids) == hf_converted.decode(ids, skip_special_tokens=True)


def test_fuzz_matches_hf(ours, hf):
    for text in _fuzz_corpus(400):
        ids = ours.encode(text, add_special=False)
        assert ids == _hf_encode(hf, text), repr(text)
        assert ours.decode(ids, skip_special=False) == text, repr(text)


def _space_before_number(text: str) -> bool:
    return any(a.isspace() and unicodedata.category(b).startswith("N") for a, b in zip(text, text[1:]))


def test_unmodified_hf_converter_differs_only_before_numbers(ours, hf_converted):
    """HF's converter drops SmolLM2's digit split; nothing else may differ."""
    for text in CORPUS + _fuzz_corpus(400, seed=1):
        ids = ours.encode(text, add_special=False)
        if ids != _hf_encode(hf_converted, text):
            assert _space_before_number(text), repr(text)
        assert hf_converted.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_and_bos(ours, hf_converted):
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert ours.encode(name, add_special=False) == [ours.token_id(name)]
        assert ours.token_id(name) == hf_converted.convert_tokens_to_ids(name)
    assert ours.eos_token == "<|im_end|>"
    # this GGUF says add_bos_token = false: encode adds nothing
    assert ours.encode("Hi", add_special=True) == ours.encode("Hi", add_special=False)


def test_stream_decoder_pieces_add_up(ours):
    """Token-by-token detokenization yields the full text, never a replacement character for a
    UTF-8 sequence split across tokens (emoji, CJK), including past its 64-token window."""
    long_text = " ".join(CORPUS[6:17])
    for text in [*CORPUS[:20], long_text]:
        ids = ours.encode(text, add_special=False)
        decoder = ours.stream()
        pieces = [decoder.push(t) for t in ids]
        assert "".join(pieces) == ours.decode(ids), repr(text)
        assert not any("\ufffd" in p for p in pieces)
    assert len(ours.encode(long_text)) > 200


def test_chat_template_matches_hf(bundled_gguf, ours, hf_converted):
    template = open_model(bundled_gguf).chat_template()
    assert template
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Hi 👋"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "日本語で?"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            text = render_chat(template, messages, ours, add_generation_prompt=gen)
            assert text == hf_converted.apply_chat_template(messages, tokenize=False,
                                                           add_generation_prompt=gen)
