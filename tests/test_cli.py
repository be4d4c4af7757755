"""`tt run` end to end, in subprocesses: one prompt, the interactive chat driven through a
pseudo-terminal (answers, summaries, prefix re-use, Ctrl-C, Ctrl-D), and every way a run can
fail — each must end in one `tt: ...` line and a non-zero exit code, never a traceback.

The damaged model files are made here from the bundled SmolLM2 GGUF and from the tiny models of
tiny_models.py (no torch needed).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import write_gguf, write_hf

import tattletale as tt
from tattletale.engine.core import DEFAULT_PAGE_SIZE
from tattletale.runtimes import BACKENDS

TT = [sys.executable, "-m", "tattletale", "run"]
SUMMARY = re.compile(r"\[(?P<prompt>\d+) prompt tokens(?:, (?P<reused>\d+) re-used from cache)?, "
                     r"(?P<prefill>[\d.]+) tok/s prefill; (?P<generated>\d+) generated, "
                     r"(?P<decode>[\d.]+) tok/s decode; (?P<backend>\w+) on (?P<device>.+)\]")


def tt_run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*TT, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """A non-zero exit, no traceback, and stderr holding one line, `tt: ...` with the fragments."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tt: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def gguf_path(bundled_gguf) -> Path:
    """The bundled model, on a machine where `tt run` can use OpenCL."""
    try:
        tt.device("opencl")
    except Exception as exc:
        pytest.skip(f"opencl: {exc}")
    return bundled_gguf


# --- successful runs -------------------------------------------------------------------------


def test_prompt_greedy_paris(gguf_path):
    proc = tt_run("-p", "The capital of France is", "--no-chat", "--temperature", "0",
                  "--max-tokens", "16", "--backend", "opencl")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith(" Paris"), proc.stdout
    words = re.findall(r"[A-Za-z]+", proc.stdout)
    assert len(words) >= 3 and all(w.isascii() for w in words), proc.stdout  # it goes on in words
    m = SUMMARY.search(proc.stderr)
    assert m, proc.stderr
    assert int(m["prompt"]) == 5 and m["reused"] is None
    assert 1 <= int(m["generated"]) <= 16
    assert float(m["prefill"]) > 0 and float(m["decode"]) > 0
    assert m["backend"] == "opencl" and m["device"].strip()


def test_tiny_hf_model_runs(tmp_path):
    path = write_hf(tmp_path / "tiny")
    proc = tt_run(str(path), "-p", "hello", "--max-tokens", "4", "--temperature", "0",
                  "--backend", "opencl")
    assert proc.returncode == 0, proc.stderr
    m = SUMMARY.search(proc.stderr)
    assert m and int(m["generated"]) == 4, proc.stderr


def test_ctrl_c_stops_a_prompt_run(gguf_path):
    proc = subprocess.Popen([*TT, "-p", "Write a long story about a dragon.", "--temperature", "0",
                             "--max-tokens", "200", "--backend", "opencl"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.read(1)  # the answer has started
        assert first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err.decode()
    assert "[interrupted]" in err.decode()
    m = SUMMARY.search(err.decode())
    assert m and int(m["generated"]) < 200


# --- the interactive chat in a pseudo-terminal -----------------------------------------------


class Terminal:
    """A child process with a pseudo-terminal as its controlling terminal (stdin and stdout) and
    stderr on a pipe, so the test types like a user (Ctrl-C and Ctrl-D go through the terminal's
    line discipline) and reads the answer and the summaries apart."""

    def __init__(self, argv: list[str]):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.err_fd = self.proc.stderr.fileno()
        self.out, self.err = "", ""
        self.seen = {"out": 0, "err": 0}  # what expect() has consumed

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def _pump(self, timeout: float) -> None:
        fds = [fd for fd in (self.master, self.err_fd) if fd is not None]
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            if not data:
                if fd == self.master:
                    self.master_closed = True
                continue
            text = data.decode(errors="replace")
            if fd == self.master:
                self.out += text
            else:
                self.err += text

    def expect(self, pattern: str, where: str = "err", timeout: float = 120) -> re.Match:
        """Wait for a match in the not yet consumed part of stdout ("out") or stderr ("err")."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            buf = getattr(self, where)
            m = regex.search(buf, self.seen[where])
            if m:
                self.seen[where] = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not self._readable():
                raise AssertionError(f"no {pattern!r} on std{where} (exit {self.proc.poll()})\n"
                                     f"--- stdout\n{self.out}\n--- stderr\n{self.err}")
            self._pump(min(left, 1.0))

    def _readable(self) -> bool:
        ready, _, _ = select.select([self.master, self.err_fd], [], [], 0.2)
        if ready:
            self._pump(0)
        return bool(ready)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        self.proc.stderr.close()


def test_interactive_chat_in_a_pty(gguf_path):
    term = Terminal([*TT, "--backend", "opencl", "--temperature", "0", "--max-tokens", "40"])
    try:
        term.expect(r"tattletale chat with \S+\.gguf on opencl")
        # the "> " prompt goes to stderr when Python reads the line itself (with GNU readline
        # loaded, it would go to stdout)
        ask = lambda: term.expect(r"(?m)^> ", "err", timeout=60)  # noqa: E731

        ask()
        term.send("What is the capital of France?\n")
        first = SUMMARY.search(term.expect(SUMMARY.pattern).group(0))
        assert first["reused"] is None and int(first["prompt"]) > 10
        assert int(first["generated"]) >= 1 and first["backend"] == "opencl"
        assert "Paris" in term.out

        ask()
        term.send("And of Germany?\n")
        second = SUMMARY.search(term.expect(SUMMARY.pattern).group(0))
        # the second turn's prompt starts with the whole first exchange, already in the cache
        # (in whole KV pages)
        page = DEFAULT_PAGE_SIZE
        assert second["reused"] is not None and int(second["reused"]) >= int(first["prompt"]) // page * page
        assert int(second["prompt"]) > int(second["reused"])

        ask()
        term.send("Write a long story about a dragon.\n")
        term.expect(r"dragon\.\r?\n", "out")  # the terminal's echo of the line
        term.expect(r"\S", "out")  # the answer has started
        term.send("\x03")  # Ctrl-C while generating: stops the answer, back to the prompt
        term.expect(r"\[interrupted\]")
        third = SUMMARY.search(term.expect(SUMMARY.pattern).group(0))
        assert int(third["generated"]) < 40

        ask()
        term.send("\x04")  # Ctrl-D at the prompt: leave
        assert term.proc.wait(timeout=30) == 0
        term._readable()
        assert "Traceback" not in term.err + term.out
    finally:
        term.close()


def test_chat_drops_old_turns_to_fit_the_context(tmp_path):
    """A conversation outgrowing --context loses its oldest turns; a message that alone does not
    fit is refused with one line, and the chat goes on."""
    path = write_hf(tmp_path / "tiny")  # its tokenizer: one token per byte
    term = Terminal([*TT, str(path), "--backend", "opencl", "--temperature", "0",
                     "--max-tokens", "4", "--context", "72"])
    try:
        ask = lambda: term.expect(r"(?m)^> ", "err", timeout=60)  # noqa: E731
        ask()
        term.send("first message, twenty\n")  # 21 bytes + 17 of template + the answer: fits
        first = SUMMARY.search(term.expect(SUMMARY.pattern).group(0))
        ask()
        term.send("second message, twenty\n")  # with the first turn: > 72 tokens
        term.expect(r"the oldest turn was dropped")
        second = SUMMARY.search(term.expect(SUMMARY.pattern).group(0))
        assert int(second["prompt"]) < int(first["prompt"]) + 30
        ask()
        term.send("x" * 80 + "\n")
        term.expect(r"(?m)^tt: the prompt has \d+ tokens, but the context holds 72")
        ask()
        term.send("\x04")
        assert term.proc.wait(timeout=30) == 0
        term._readable()
        assert "Traceback" not in term.err
    finally:
        term.close()


def test_chat_reads_piped_input(tmp_path):
    """Without a terminal the chat reads lines until the end of its input."""
    path = write_hf(tmp_path / "tiny")
    proc = subprocess.run([*TT, str(path), "--backend", "opencl", "--max-tokens", "3"],
                          input="hello\nagain\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summaries = SUMMARY.findall(proc.stderr)
    assert len(summaries) == 2, proc.stderr


# --- errors: one line, non-zero exit, no traceback -------------------------------------------


def _copy_head(src: Path, dst: Path, n: int) -> Path:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(n))
    return dst


def _patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return dst


def test_missing_model_path(tmp_path):
    assert_clean_error(tt_run(str(tmp_path / "nope.gguf"), "-p", "hi"), "does not exist")


def test_not_a_model(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert_clean_error(tt_run(str(path), "-p", "hi"), "neither an HF model directory nor a .gguf")


def test_unreadable_model_path(tmp_path):
    """A path that exists but cannot be read (a socket: unreadable even for root)."""
    path = tmp_path / "model.gguf"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        assert_clean_error(tt_run(str(path), "-p", "hi"), "cannot read", str(path))
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_model_without_read_permission(tmp_path, gguf_path):
    path = _copy_head(gguf_path, tmp_path / "model.gguf", 1 << 16)
    path.chmod(0)
    assert_clean_error(tt_run(str(path), "-p", "hi"), "cannot read", "ermission denied")


@pytest.mark.parametrize("case", ["bad-magic", "header-cut", "data-cut", "tail-cut", "version",
                                  "kv-count"])
def test_corrupt_gguf(tmp_path, gguf_path, case):
    size = gguf_path.stat().st_size
    dst = tmp_path / "model.gguf"
    if case == "bad-magic":
        path = _patched(gguf_path, dst, 0, b"GGXF")
    elif case == "header-cut":  # inside the tokenizer's metadata
        path = _copy_head(gguf_path, dst, 1 << 19)
    elif case == "data-cut":  # inside the tensor data
        path = _copy_head(gguf_path, dst, size // 2)
    elif case == "tail-cut":  # the last bytes of the last tensor
        path = _copy_head(gguf_path, dst, size - 1000)
    elif case == "version":
        path = _patched(gguf_path, dst, 4, struct.pack("<I", 99))
    else:  # the metadata count: the parser reads past the header
        path = _patched(gguf_path, dst, 16, struct.pack("<Q", 1 << 40))
    fragment = "not a GGUF file" if case == "bad-magic" else "truncated or corrupt"
    assert_clean_error(tt_run(str(path), "-p", "hi"), fragment)


def test_gguf_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch="mamba")
    assert_clean_error(tt_run(str(path), "-p", "hi"), "unsupported architecture 'mamba'", "llama")


def test_gguf_unsupported_tensor_type(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", dtypes={"blk.0.attn_q.weight": np.int32})
    assert_clean_error(tt_run(str(path), "-p", "hi", "--backend", "opencl"),
                       "blk.0.attn_q.weight", "I32")


def test_gguf_unsupported_tokenizer(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tokenizer="bert")
    assert_clean_error(tt_run(str(path), "-p", "hi", "--backend", "opencl"),
                       "tokenizer model 'bert' is not supported")


def _damage_hf(path: Path, case: str) -> None:
    st = path / "model.safetensors"
    cfg = json.loads((path / "config.json").read_text())
    if case == "no-config":
        (path / "config.json").unlink()
    elif case == "config-json":
        (path / "config.json").write_text('{"model_type": "llama", ')
    elif case == "config-key":
        del cfg["hidden_size"]
        (path / "config.json").write_text(json.dumps(cfg))
    elif case == "architecture":
        cfg["model_type"] = "gpt2"
        (path / "config.json").write_text(json.dumps(cfg))
    elif case == "quantized":
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
        (path / "config.json").write_text(json.dumps(cfg))
    elif case == "shape":
        cfg["intermediate_size"] = 128
        (path / "config.json").write_text(json.dumps(cfg))
    elif case == "no-weights":
        st.unlink()
    elif case == "truncated":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    elif case == "header":
        data = bytearray(st.read_bytes())
        data[8:40] = b"\xff" * 32
        st.write_bytes(bytes(data))
    elif case == "tokenizer":
        (path / "tokenizer.json").write_text("{not json")
    else:
        raise AssertionError(case)


HF_CASES = {
    "no-config": "no config.json", "config-json": "config.json", "config-key": "lacks 'hidden_size'",
    "architecture": "unsupported architecture 'gpt2'", "quantized": "quantized HF checkpoints",
    "shape": "shape", "no-weights": "no .safetensors", "truncated": "truncated or corrupt",
    "header": "model.safetensors", "tokenizer": "tokenizer.json",
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_damaged_hf_model(tmp_path, case):
    path = write_hf(tmp_path / "tiny")
    _damage_hf(path, case)
    assert_clean_error(tt_run(str(path), "-p", "hi", "--backend", "opencl"), HF_CASES[case])


@pytest.mark.parametrize("case", ["missing-tensor", "int8"])
def test_hf_weights_that_cannot_be_used(tmp_path, case):
    from tiny_models import random_weights

    weights = random_weights()
    name = "model.layers.1.mlp.up_proj.weight"
    if case == "missing-tensor":
        del weights[name]
        fragment = "blk.1.ffn_up"
    else:
        weights[name] = np.zeros(weights[name].shape, np.int8)
        fragment = "dtype I8"
    path = write_hf(tmp_path / "tiny", weights=weights)
    assert_clean_error(tt_run(str(path), "-p", "hi", "--backend", "opencl"), fragment)


def test_prompt_longer_than_the_context(tmp_path):
    path = write_hf(tmp_path / "tiny")
    proc = tt_run(str(path), "-p", "x" * 40, "--no-chat", "--context", "16", "--backend", "opencl")
    line = assert_clean_error(proc, "the prompt has 40 tokens", "context holds 16")
    assert "allows up to 128" in line
    assert not SUMMARY.search(proc.stderr)  # refused before generating anything


def test_backend_not_available():
    available = {backend for backend, _, _ in tt.devices()}
    missing = [b for b in BACKENDS if b not in available]
    if not missing:
        pytest.skip("every backend is available here")
    line = assert_clean_error(tt_run("-p", "hi", "--backend", missing[0]),
                              f"backend {missing[0]!r} is not available")
    assert "available: " + ", ".join(sorted(available)) in line


def test_bad_arguments():
    proc = tt_run("-p", "hi", "--context", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--context: must be at least 2" in proc.stderr


def test_unexpected_errors_are_one_line_unless_asked(monkeypatch, capsys):
    """A bug shows as one `tt: internal error` line; TT_TRACEBACK=1 lets the exception through."""
    from tattletale import cli
    from tattletale.engine import llm

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(tt, "device", lambda *args: None)  # no device needed
    monkeypatch.setattr(llm, "LLM", broken)
    monkeypatch.delenv("TT_TRACEBACK", raising=False)
    assert cli.main(["run", "-p", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("tt: internal error: RuntimeError: something broke (set TT_TRACEBACK=1 "
                           "for the traceback)")
    monkeypatch.setenv("TT_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="something broke"):
        cli.main(["run", "-p", "hi"])
