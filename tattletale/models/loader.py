"""Reading model files: HF directories (config + safetensors) and GGUF files.

Both readers yield host tensors under one naming scheme (GGUF's short names: `token_embd`,
`blk.3.attn_q`, `output_norm`, …) so the model definition does not care where weights came from.
Data stays memory-mapped until a layer is uploaded; nothing holds a full host copy of the model.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig, ModelFileError, UnsupportedModel

# GGUF block formats the kernels decode directly; other quantized types are dequantized at load
KERNEL_BLOCK_FORMATS = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1"}
_FLOAT_GGUF = {"F32": "f32", "F16": "f16", "BF16": "bf16"}

_HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm", "self_attn.q_proj.weight": "attn_q",
    "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v",
    "self_attn.o_proj.weight": "attn_output", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm", "self_attn.k_norm.weight": "attn_k_norm",
    "post_attention_layernorm.weight": "ffn_norm", "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
}
_HF_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_HF_TOP_NAMES = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm",
                 "lm_head.weight": "output"}


@dataclass
class HostTensor:
    """A tensor as stored in the file: fmt is f32/f16/bf16 (data: float array, bf16 as uint16
    bits) or a GGUF block format (data: uint8 block bytes, one row per output feature)."""

    fmt: str
    shape: tuple[int, ...]
    data: np.ndarray


class ModelFile:
    """An opened model: its config, tensor names, and tensors read on demand."""

    config: ModelConfig
    path: Path

    def names(self) -> list[str]:
        raise NotImplementedError

    def get(self, name: str) -> HostTensor:
        raise NotImplementedError

    def tokenizer(self):
        raise NotImplementedError

    def chat_template(self) -> str | None:
        raise NotImplementedError


def open_model(path: str | os.PathLike) -> ModelFile:
    """Open an HF model directory or a GGUF file. Every problem with the files (missing,
    unreadable, truncated, corrupt, incomplete config) is a ModelFileError, and an architecture or
    tensor type tattletale cannot run is an UnsupportedModel: callers show one line, not a trace."""
    p = Path(path).expanduser()
    try:
        if not p.exists():
            raise ModelFileError(f"model path does not exist: {p}")
        if p.is_dir():
            return HFModel(p)
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFModel(p)
    except OSError as exc:  # permissions, a special file, an I/O error
        raise ModelFileError(f"cannot read {p}: {exc.strerror or exc}") from None
    if p.suffix == ".gguf":
        raise ModelFileError(f"{p} is not a GGUF file (it does not start with the GGUF magic)")
    if p.suffix == ".safetensors":
        raise ModelFileError(f"{p} is a weights file: pass the HF model directory that holds it and "
                             f"its config.json")
    raise ModelFileError(f"{p} is neither an HF model directory nor a .gguf file")


def _config_error(where: Path, exc: Exception) -> ModelFileError:
    """A config whose values have the wrong types (a corrupt or hand-edited file)."""
    return ModelFileError(f"{where}: invalid model configuration ({exc})")


# --- GGUF ---------------------------------------------------------------------------------------


class GGUFModel(ModelFile):
    def __init__(self, path: Path):
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # truncated files fail inside numpy's memmap or the parser
            raise ModelFileError(f"GGUF file {path} is truncated or corrupt ({exc})") from None
        self.meta = {}
        for key, field in self.reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key[15:] in ("tokens", "merges", "token_type",
                                                                  "scores"):
                continue  # large arrays, read by the tokenizer builder on demand
            try:
                self.meta[key] = field.contents()
            except Exception:
                continue
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._converted: set[str] = set()  # block formats already reported as converted
        end = max((t.data_offset + t.n_bytes for t in self.reader.tensors), default=0)
        if end > path.stat().st_size:
            raise ModelFileError(f"GGUF file {path} is truncated ({path.stat().st_size} bytes, "
                                 f"tensors need {end})")
        embd = self.tensors.get("token_embd.weight")
        try:
            self.config = ModelConfig.from_gguf(self.meta, has_output="output.weight" in self.tensors,
                                                n_vocab=int(embd.shape[-1]) if embd is not None else None,
                                                source=f"the metadata of {path}")
        except (ModelFileError, UnsupportedModel):
            raise
        except (TypeError, ValueError) as exc:
            raise _config_error(path, exc) from None

    def field(self, key: str):
        f = self.reader.fields.get(key)
        return None if f is None else f.contents()

    def names(self) -> list[str]:
        return [n.removesuffix(".weight") for n in self.tensors]

    def get(self, name: str) -> HostTensor:
        t = self.tensors.get(name if name.endswith(".bias") else name + ".weight") or \
            self.tensors.get(name)
        if t is None:
            raise ModelFileError(f"{self.path} has no tensor {name!r}")
        kind = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists the fastest dim first
        if kind in _FLOAT_GGUF:
            data = np.asarray(t.data)
            if kind == "BF16":
                data = data.view(np.uint16)
            return HostTensor(_FLOAT_GGUF[kind], shape, data.reshape(shape))
        if kind == "F64":  # rare, but lossless enough to take: the kernels compute in f32
            return HostTensor("f32", shape, np.asarray(t.data).astype(np.float32).reshape(shape))
        if kind in KERNEL_BLOCK_FORMATS and len(shape) == 2:
            return HostTensor(KERNEL_BLOCK_FORMATS[kind], shape, np.asarray(t.data).reshape(shape[0], -1))
        from gguf.quants import dequantize

        try:
            values = dequantize(np.asarray(t.data), t.tensor_type)
        except NotImplementedError:
            raise UnsupportedModel(f"tensor {t.name} has type {kind}, which neither tattletale's "
                                   f"kernels nor the gguf package can decode") from None
        if kind not in self._converted:  # once per type: a K-quant model has hundreds of tensors
            self._converted.add(kind)
            warnings.warn(f"{kind} tensors are converted to f16 at load (the kernels decode "
                          f"{', '.join(KERNEL_BLOCK_FORMATS)} directly)", stacklevel=2)
        return HostTensor("f16", shape, values.reshape(shape).astype(np.float16))

    def tokenizer(self):
        from .tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(self)

    def chat_template(self) -> str | None:
        return self.meta.get("tokenizer.chat_template")


# --- HF directories -----------------------------------------------------------------------------


class HFModel(ModelFile):
    def __init__(self, path: Path):
        self.path = path
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            raise ModelFileError(f"{path} has no config.json: not an HF model directory")
        self.hf_config = read_json(cfg_path)
        try:
            self.config = ModelConfig.from_hf(self.hf_config, source=str(cfg_path))
        except (ModelFileError, UnsupportedModel):
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise _config_error(cfg_path, exc) from None
        gen = path / "generation_config.json"
        self.generation_config = read_json(gen) if gen.exists() else {}
        eos = self.generation_config.get("eos_token_id")
        if eos is not None:
            self.config.eos_token_ids = list(eos) if isinstance(eos, list) else [eos]
        self._index: dict[str, Path] = {}
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelFileError(f"{path} has no .safetensors weights")
        from safetensors import safe_open

        self._handles = {}
        for f in files:
            try:
                h = safe_open(str(f), framework="numpy")
                keys = list(h.keys())
            except Exception as exc:
                raise ModelFileError(f"cannot read {f} (truncated or corrupt?): {exc}") from None
            self._handles[f] = h
            for k in keys:
                self._index[k] = f
        self._names = {}
        for k in self._index:
            short = self._short(k)
            if short is not None:
                self._names[short] = k

    @staticmethod
    def _short(hf_name: str) -> str | None:
        if hf_name in _HF_TOP_NAMES:
            return _HF_TOP_NAMES[hf_name]
        parts = hf_name.split(".", 3)
        if len(parts) == 4 and parts[0] == "model" and parts[1] == "layers":
            mapped = _HF_LAYER_NAMES.get(parts[3])
            return f"blk.{parts[2]}.{mapped}" if mapped else None
        return None

    def names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> HostTensor:
        key = self._names.get(name)
        if key is None:
            raise ModelFileError(f"{self.path} has no weight for {name!r} (its safetensors lack it)")
        handle = self._handles[self._index[key]]
        try:
            sl = handle.get_slice(key)
            dtype = sl.get_dtype()
        except Exception as exc:
            raise ModelFileError(f"cannot read tensor {key} from {self._index[key]}: {exc}") from None
        if dtype not in _HF_FLOAT_DTYPES:
            raise UnsupportedModel(f"tensor {key} has dtype {dtype}; tattletale loads F32, F16 and "
                                   f"BF16 safetensors (and GGUF files)")
        try:
            if dtype == "BF16":
                raw = _bf16_bits(self._index[key], key, sl.get_shape())
                return HostTensor("bf16", tuple(raw.shape), raw)
            arr = handle.get_tensor(key)
        except Exception as exc:
            raise ModelFileError(f"cannot read tensor {key} from {self._index[key]}: {exc}") from None
        if arr.dtype == np.float16:
            return HostTensor("f16", arr.shape, arr)
        return HostTensor("f32", arr.shape, arr.astype(np.float32, copy=False))

    def tokenizer(self):
        from .tokenizer import tokenizer_from_hf

        return tokenizer_from_hf(self.path)

    def chat_template(self) -> str | None:
        cfg = self.path / "tokenizer_config.json"
        if cfg.exists():
            tpl = read_json(cfg).get("chat_template")
            if isinstance(tpl, list):  # named templates: take the default
                tpl = next((t["template"] for t in tpl if t.get("name") == "default"), None)
            if tpl:
                return tpl
        jinja = self.path / "chat_template.jinja"
        return jinja.read_text() if jinja.exists() else None


def read_json(path: Path) -> dict:
    """A JSON object from a model's folder; unreadable or malformed files are ModelFileErrors."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path} does not hold a JSON object")
    return value


def _bf16_bits(file: Path, key: str, shape: list[int]) -> np.ndarray:
    """bf16 tensors as uint16 bits, read from the safetensors header offsets (numpy has no bf16)."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    begin, end = header[key]["data_offsets"]
    mm = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + n + begin, shape=(end - begin,))
    return mm.view(np.uint16).reshape(shape)

