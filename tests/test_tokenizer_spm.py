"""The GGUF SentencePiece tokenizer (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral 7B,
TinyLlama) against its references, on a SentencePiece BPE model trained here (byte fallback, a
user-defined symbol, Llama's identity normalization) and written into a GGUF the way llama.cpp's
converter writes one: tokens, scores, token types, special ids, a chat template.

The references, and where they disagree:

* `sentencepiece` itself, the model's own tokenizer, is the reference for text without added
  tokens: ids, decoded text and the decode(encode(x)) round trip must equal its own.
* Text with added tokens (control tokens such as <s>, user-defined ones such as <sep>): the
  runtimes cut the text at them and give each stretch between them its own dummy prefix space
  (llama.cpp's rule, and HF's legacy Llama tokenizers'). That is also what the model's authors
  feed it: Llama 2's reference chat code encodes each turn as BOS + SentencePiece(text), which
  is what "<s>[INST] …" tokenizes to here. The reference is therefore SentencePiece applied to
  each stretch on its own. SentencePiece, which sees user-defined symbols inside the text, adds
  one prefix at the very start and none after them ("a<sep>b": ▁a <sep> b, here ▁a <sep> ▁b;
  "<sep>b": ▁ <sep> b, here <sep> ▁b); a test pins that down.
* HF's GGUF loader (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) builds a Metaspace
  pre-tokenizer with prepend_scheme="first", which adds no dummy prefix to text that already
  starts with a space or "▁" ("  hi": SentencePiece ▁▁ ▁ hi, HF ▁▁ hi, whose decoding then
  loses a space) nor after an added token, and which ignores add_space_prefix = false. Its ids
  are compared on every other text, the places where it differs are checked to be only those,
  and its decoder (the same chain as ours) is compared on every text.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from test_tokenizer import CORPUS as SHARED_CORPUS

from tattletale.models import ModelFileError, UnsupportedModel, open_model
from tattletale.models.tokenizer import render_chat

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

USER_DEFINED = ["<sep>"]
ADDED = ["<unk>", "<s>", "</s>", *USER_DEFINED]

# The training text: several scripts, code, numbers and whitespace runs, so that the vocabulary
# has whitespace pieces ("▁▁▁▁") and multi-character pieces in each script; the rarest
# characters fall outside the 99.5% character coverage and are left to byte fallback.
TRAIN = [
    "The quick brown fox jumps over the lazy dog while the children watch from the window.",
    "Machine learning models are trained on large amounts of text, and tokenizers cut that text "
    "into pieces that the model can look up in its vocabulary.",
    "In the beginning the words were split into characters, and the most frequent pairs were "
    "joined again and again until the vocabulary was full.",
    "Le renard brun rapide saute par-dessus le chien paresseux. Ça va très bien, merci beaucoup! "
    "Où est la gare? Nous sommes arrivés à l'hôtel après une longue journée.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Mädchen und Bücher "
    "liegen auf dem Tisch. Wir fahren morgen nach München.",
    "El rápido zorro marrón salta sobre el perro perezoso. ¿Dónde está la biblioteca? ¡Vámonos! "
    "Mañana vamos a la playa con nuestros amigos.",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир! Как дела? Сегодня "
    "хорошая погода, и мы идём гулять в парк.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Καλημέρα κόσμε, τι κάνεις;",
    "日本語のテキストです。東京は日本の首都です。今日はいい天気ですね。明日は雨が降るでしょう。",
    "中文文本：你好，世界！这是一个测试。我们今天去公园散步。明天我们去北京。",
    "한국어 텍스트: 안녕하세요, 세계! 서울은 한국의 수도입니다. 오늘 날씨가 좋네요.",
    "العربية: مرحبا بالعالم! هذه جملة للاختبار. كيف حالك اليوم؟ نحن نحب القراءة.",
    "हिन्दी: नमस्ते दुनिया! यह एक परीक्षण है। आज मौसम अच्छा है। हम कल दिल्ली जाएंगे।",
    "def main(argv: list[str]) -> int:\n    for i, arg in enumerate(argv):\n        print(i, arg)\n"
    "    return 0\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\nreturn sum;\n",
    'SELECT id, name FROM users WHERE age >= 18; {"key": [1, 2.5, null, true]}',
    "    indented    text   with   runs   of   spaces\t\ttabs\n\n\nand    newlines\n        deeper",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14 2024-01-01 version 1.2.3 $5.99 100%",
    "Emoji 😀 😃 👍 ❤️ 🎉 are fun 😀😀 and so are flags 🇫🇷 🇯🇵",
    "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWhat is the capital of France? [/INST]"
    " The capital of France is Paris.",
]

# the byte-level tokenizer's corpus, less its ChatML special tokens, plus SentencePiece's own marks
CORPUS = [t for t in SHARED_CORPUS if "<|" not in t] + [
    "▁ the space marker itself ▁▁ and <0x41> spelled out",
]

# text with added tokens (cut at them; see the module doc)
WITH_ADDED = [
    "<s>[INST] Hi! [/INST] Hello.</s><s>[INST] And you? [/INST]",
    "<s> leading space after BOS", "<s>  two", "</s>", "<s>", "a<s>b</s>c", "x </s> y",
    "<unk> unknown <unk>", "a<sep>b", "<sep>", "one <sep> two<sep>three", " <sep> ",
    "<s><sep></s>", "日本<s>語</s>😀<sep>\n\n",
]

LLAMA2_TEMPLATE = (
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}"
    "{% for m in (messages[1:] if system is not none else messages) %}"
    "{% if m['role'] == 'user' %}"
    "{% set text = m['content'] if system is none or not loop.first "
    "else '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content'] %}"
    "{{ bos_token }}[INST] {{ text | trim }} [/INST]"
    "{% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}{% endfor %}"
)


def _fuzz_corpus(n: int, seed: int = 0) -> list[str]:
    """Random strings: pieces of the vocabulary's scripts, runs of spaces, tabs and newlines, "▁"
    itself, added tokens, and random code points (mostly absent from the vocabulary: byte
    fallback)."""
    pieces = list("abcXYZ019 .,!?'-_\t\n\r") + [
        "  ", "   ", "    ", "\n\n", " \n", "\t\t", "▁", "▁▁", "the", "ing", "aaa", "ß", "é", "e\u0301",
        "日", "本", "語", "ع", "न", "्", "😀", "👩", "\u200d", "🏽", "\ufe0f", "\u00a0", "\u3000", "\x00"]
    rnd = random.Random(seed)

    def pick() -> str:
        r = rnd.random()
        if r < 0.02:
            return rnd.choice(["<s>", "</s>", "<sep>"])
        if r < 0.8:
            return rnd.choice(pieces)
        c = rnd.randrange(0x20, 0x30000)
        return chr(c) if not 0xD800 <= c < 0xE000 else "?"

    return ["".join(pick() for _ in range(rnd.randint(0, 24))) for _ in range(n)]


FUZZ = _fuzz_corpus(500)


def _train(add_dummy_prefix: bool):
    """A SentencePiece BPE model trained like Llama's: identity normalization, no whitespace
    cleanup, byte fallback, digits not split, whitespace-only pieces allowed."""
    rnd = random.Random(0)
    lines = [line for _ in range(40) for line in rnd.sample(TRAIN, len(TRAIN))]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="bpe", vocab_size=1200,
        hard_vocab_limit=False, byte_fallback=True, character_coverage=0.995,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix, allow_whitespace_only_pieces=True,
        user_defined_symbols=USER_DEFINED, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=out.getvalue())


def _token_type(sp, i: int) -> int:
    """GGUF token type (llama.cpp's numbering) of SentencePiece piece i."""
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_byte(i):
        return 6
    if sp.is_unused(i):
        return 5
    return 4 if sp.id_to_piece(i) in USER_DEFINED else 1


def _write_gguf(path: Path, sp, *, model: str = "llama", scores: bool = True,
                add_space_prefix: bool | None = None, add_eos: bool = False) -> Path:
    """A GGUF with sp's vocabulary as llama.cpp's converter writes it (no tensors: only the
    metadata the loader and the tokenizer read)."""
    n = sp.get_piece_size()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_vocab_size(n)
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model(model)
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    if scores:
        w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([_token_type(sp, i) for i in range(n)])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(add_eos)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.add_chat_template(LLAMA2_TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def sp():
    return _train(add_dummy_prefix=True)


@pytest.fixture(scope="session")
def spm_gguf(sp, tmp_path_factory) -> Path:
    return _write_gguf(tmp_path_factory.mktemp("spm") / "llama-spm.gguf", sp)


@pytest.fixture(scope="session")
def ours(spm_gguf):
    return open_model(spm_gguf).tokenizer()


@pytest.fixture(scope="session")
def hf(spm_gguf):
    return transformers.AutoTokenizer.from_pretrained(spm_gguf.parent, gguf_file=spm_gguf.name)


def _pieces(sp, ids: list[int]) -> list[str]:
    return [sp.id_to_piece(i) for i in ids]


def _has_added(text: str) -> bool:
    return any(t in text for t in ADDED)


def _by_stretch(sp, text: str) -> list[int]:
    """The added-token reference: SentencePiece on each stretch between added tokens."""
    ids, rest = [], text
    while rest:
        at = min(((rest.find(t), t) for t in ADDED if t in rest), default=None)
        if at is None:
            return ids + sp.encode(rest)
        start, token = at
        ids += (sp.encode(rest[:start]) if start else []) + [sp.piece_to_id(token)]
        rest = rest[start + len(token):]
    return ids


def test_vocabulary_is_realistic(sp):
    """The trained model has what real Llama vocabularies have: 256 byte pieces, whitespace-run
    pieces and most of its pieces as merges; the test corpora reach byte fallback."""
    n = sp.get_piece_size()
    assert n >= 1000
    assert sum(sp.is_byte(i) for i in range(n)) == 256
    assert {"▁▁", "▁▁▁▁"} <= {sp.id_to_piece(i) for i in range(n)}
    assert sum(len(sp.id_to_piece(i)) > 1 and not sp.is_byte(i) for i in range(n)) > 500
    used = {i for text in CORPUS + FUZZ for i in sp.encode(text)}
    assert sum(sp.is_byte(i) for i in used) > 50


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_corpus_matches_sentencepiece(ours, sp, text):
    ids = ours.encode(text, add_special=False)
    assert _pieces(sp, ids) == sp.encode(text, out_type=str)
    assert ours.decode(ids) == sp.decode(ids)
    if "▁" not in text:  # SentencePiece reads "▁" as a space, so only then is it lossless
        assert ours.decode(ids) == text


def test_fuzz_matches_sentencepiece(ours, sp):
    for text in FUZZ:
        ids = ours.encode(text, add_special=False)
        if _has_added(text):
            assert ids == _by_stretch(sp, text), repr(text)
        else:
            assert ids == sp.encode(text), repr(text)
        assert ours.decode(ids) == sp.decode(ids), repr(text)


def test_bos_eos_and_special_tokens(ours, hf, sp):
    assert (ours.bos_token, ours.eos_token) == ("<s>", "</s>") == (hf.bos_token, hf.eos_token)
    assert ours.add_bos and not ours.add_eos
    assert ours.encode("Hi") == [sp.bos_id(), *sp.encode("Hi")] == hf.encode("Hi")
    assert ours.encode("") == [sp.bos_id()]
    for token in ADDED:
        assert ours.token_id(token) == sp.piece_to_id(token) == hf.convert_tokens_to_ids(token)
        assert ours.encode(token, add_special=False) == [sp.piece_to_id(token)]
    # control and unknown tokens are dropped by decode(skip_special); user-defined ones stay
    ids = ours.encode("<s>a<sep>b</s><unk>", add_special=False)
    assert ours.decode(ids) == "a<sep> b"
    assert ours.decode(ids, skip_special=False) == "<s> a<sep> b</s><unk>"


@pytest.mark.parametrize("text", WITH_ADDED, ids=range(len(WITH_ADDED)))
def test_added_tokens_restart_the_dummy_prefix(ours, sp, text):
    assert ours.encode(text, add_special=False) == _by_stretch(sp, text)


def test_sentencepiece_differs_at_user_defined_symbols(ours, sp):
    """SentencePiece gives the whole text one dummy prefix, even in front of a user-defined symbol,
    and none after one; we (like llama.cpp) give each stretch between added tokens its own."""
    cases = {"a<sep>b": (["▁a", "<sep>", "▁b"], ["▁a", "<sep>", "b"]),
             "<sep>b": (["<sep>", "▁b"], ["▁", "<sep>", "b"])}
    for text, (expected, theirs) in cases.items():
        assert _pieces(sp, ours.encode(text, add_special=False)) == expected
        assert sp.encode(text, out_type=str) == theirs


def test_hf_gguf_loader_differs_only_by_its_prefix_rule(ours, hf, sp):
    """HF's ids equal ours except on text starting with whitespace or "▁" (see the module doc),
    and its decoder reads our ids as ours does."""
    differ = 0
    for text in CORPUS + FUZZ:
        if _has_added(text):
            continue
        ids = ours.encode(text, add_special=False)
        if hf.encode(text, add_special_tokens=False) != ids:
            assert text[:1] in (" ", "▁"), repr(text)
            differ += 1
        assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids), repr(text)
        assert hf.decode(ids, skip_special_tokens=False) == ours.decode(ids, skip_special=False)
    assert differ  # the corpora do exercise the difference
    # the difference: HF drops the dummy prefix where the text starts with a space
    pieces = _pieces(sp, ours.encode("  hi", add_special=False))
    assert pieces[:2] == ["▁▁", "▁"]
    assert _pieces(sp, hf.encode("  hi", add_special_tokens=False)) == ["▁▁", *pieces[2:]]
    for text in WITH_ADDED:
        ids = ours.encode(text, add_special=False)
        assert hf.decode(ids, skip_special_tokens=False) == ours.decode(ids, skip_special=False)


def test_stream_decoder_pieces_add_up(ours):
    """Token-by-token detokenization yields the full text: the dummy prefix's space dropped once,
    byte-fallback characters (emoji, rare CJK and Indic letters) held back until their last byte
    arrives, including past the decoder's 64-token window."""
    long_text = " ".join(CORPUS[6:17])
    for text in [*CORPUS, *FUZZ[:100], long_text]:
        ids = ours.encode(text)
        decoder = ours.stream()
        pieces = [decoder.push(t) for t in ids]
        assert "".join(pieces) == ours.decode(ids), repr(text)
        assert not any("\ufffd" in p for p in pieces), repr(text)
    assert len(ours.encode(long_text)) > 200


def test_llama2_chat_template(spm_gguf, ours, hf, sp):
    """A Llama-2-style template ([INST] turns, each opened by bos_token) renders as HF renders it,
    and its text tokenizes to what Llama 2's reference chat code feeds the model: per turn, BOS +
    SentencePiece("[INST] {user} [/INST] {answer} ") + EOS."""
    template = open_model(spm_gguf).chat_template()
    assert template == LLAMA2_TEMPLATE
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris. 🇫🇷"},
                {"role": "user", "content": "日本語で?  "}]
    text = render_chat(template, messages, ours)
    assert text == hf.apply_chat_template(messages, tokenize=False)
    assert text == ("<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is the capital of France? "
                    "[/INST] Paris. 🇫🇷 </s><s>[INST] 日本語で? [/INST]")
    bos, eos = sp.bos_id(), sp.eos_id()
    reference = ([bos, *sp.encode("[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is the capital "
                                  "of France? [/INST] Paris. 🇫🇷 "), eos]
                 + [bos, *sp.encode("[INST] 日本語で? [/INST]")])
    assert ours.encode(text, add_special=False) == reference


def test_without_space_prefix(tmp_path):
    """add_space_prefix = false (a model trained without SentencePiece's dummy prefix): no "▁" is
    added, and decoding strips no space."""
    sp = _train(add_dummy_prefix=False)
    ours = open_model(_write_gguf(tmp_path / "m.gguf", sp, add_space_prefix=False)).tokenizer()
    for text in CORPUS + FUZZ[:200]:
        if _has_added(text):
            continue
        ids = ours.encode(text, add_special=False)
        assert ids == sp.encode(text), repr(text)
        assert ours.decode(ids) == sp.decode(ids), repr(text)
    assert ours.decode(ours.encode(" hi")) == " hi"


def test_add_eos(sp, tmp_path):
    ours = open_model(_write_gguf(tmp_path / "m.gguf", sp, add_eos=True)).tokenizer()
    assert ours.encode("Hi") == [sp.bos_id(), *sp.encode("Hi"), sp.eos_id()]
    assert ours.encode("Hi", add_special=False) == sp.encode("Hi")


def test_unsupported_or_incomplete_vocabularies(sp, tmp_path):
    with pytest.raises(UnsupportedModel, match="tokenizer model 'bert' is not supported"):
        open_model(_write_gguf(tmp_path / "bert.gguf", sp, model="bert")).tokenizer()
    with pytest.raises(ModelFileError, match="needs tokenizer.ggml.scores"):
        open_model(_write_gguf(tmp_path / "noscores.gguf", sp, scores=False)).tokenizer()
