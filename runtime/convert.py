"""`minicpm convert`: an HF checkpoint folder to a GGUF file that llama.cpp loads.

Architecture `minicpm` for MiniCPM configs (embedding, residual and logit scales as metadata,
LongRoPE factors as the rope_factors_long/short tensors), `llama` for Llama configs. q_proj and
k_proj rows are permuted the way llama.cpp's converter does (GGML's RoPE rotates adjacent pairs).

The file is streamed: metadata and tensor infos are written first, then each tensor is read from
safetensors, converted and written, so an 8B checkpoint converts without holding a second copy of
its weights in memory. The output appears under its final name only when complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from runtime.checkpoint import load_hf_config, read_json, safetensors_files
from runtime.config import ModelConfig
from runtime.errors import MiniCPMError, ModelLoadError, UnsupportedModelError
from runtime.gguf_model import GLOBAL_TENSORS, LAYER_TENSORS

OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType values
# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
HF_TO_GGUF = {hf: gg for gg, hf in GLOBAL_TENSORS.items()} | {
    f"model.layers.{{}}.{hf}": f"blk.{{}}.{gg}" for gg, hf in LAYER_TENSORS.items()
}


def gguf_tensor_name(hf_name: str) -> str:
    parts = hf_name.split(".")
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
        pattern = ".".join(parts[:2] + ["{}"] + parts[3:])
        if pattern in HF_TO_GGUF:
            return HF_TO_GGUF[pattern].format(parts[2])
    raise UnsupportedModelError(f"the checkpoint holds a tensor '{hf_name}' that has no GGUF counterpart")


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's q/k permutation (the inverse of gguf_model.unpermute_rope_rows)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


# Tokenizer -------------------------------------------------------------------------------------

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a byte-level tokenizer.json pre-tokenizer; unknown ones are refused."""
    from runtime.gguf_vocab import PRE_TOKENIZER_REGEXES

    def is_bytelevel(p, use_regex):
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) == use_regex

    steps = _steps(pre) or [{}]
    if len(steps) == 1 and is_bytelevel(steps[0], True):
        return "gpt-2"
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") and is_bytelevel(steps[1], True):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and is_bytelevel(steps[1], False):
        regex = (steps[0].get("pattern") or {}).get("Regex", "")
        for name, regexes in PRE_TOKENIZER_REGEXES.items():
            # llama.cpp rewrites the case-insensitive group of the original regex; compare the rest.
            tail = regexes[-1].split(")", 1)[-1]
            if len(regexes) == 1 and name in ("llama-bpe", "qwen2") and regex.endswith(tail):
                return name
    raise UnsupportedModelError(
        "the tokenizer's pre-tokenizer is not one llama.cpp knows by name (supported: gpt-2, smollm, "
        "llama-bpe, qwen2, and SentencePiece-style byte-fallback BPE); convert it with llama.cpp's "
        "convert_hf_to_gguf.py instead"
    )


def _steps(node: dict | None) -> list[dict]:
    """The steps of a tokenizer.json normalizer or pre-tokenizer, Sequences flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        children = node.get("normalizers") or node.get("pretokenizers") or []
        return [step for child in children for step in _steps(child)]
    return [node]


def _prepends_space(data: dict) -> bool:
    """Whether a SentencePiece-style tokenizer.json puts '▁' before the text (GGUF add_space_prefix)."""
    if any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in _steps(data.get("normalizer"))):
        return True
    for step in _steps(data.get("pre_tokenizer")):
        if step.get("type") == "Metaspace":  # newer files say prepend_scheme, older add_prefix_space
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return False


def tokenizer_metadata(folder: Path, config: ModelConfig) -> dict:
    """GGUF tokenizer fields (tokens, types, scores or merges, special ids, template) from tokenizer.json."""
    data = read_json(folder / "tokenizer.json", "tokenizer.json")
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModelError(f"tokenizer.json holds a {model.get('type')} model; only BPE converts to GGUF")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    for content, tok in added.items():
        vocab.setdefault(content, tok["id"])
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for piece, i in vocab.items():
        tokens[i], types[i] = piece, NORMAL
    unk = model.get("unk_token")
    for tok in added.values():
        types[tok["id"]] = CONTROL if tok.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    meta: dict = {"tokens": tokens}
    if model.get("byte_fallback"):
        meta["model"] = "llama"
        # SentencePiece merges best-scored pairs first; HF stores the same order as merge ranks.
        rank = {"".join(m.split(" ", 1)): r for r, m in enumerate(merges)}
        meta["scores"] = [-(rank[t] + 1.0) if t in rank else 0.0 for t in tokens]
        for i, piece in enumerate(tokens):
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                types[i] = BYTE
            elif piece == unk:
                types[i] = UNKNOWN
        meta["add_space_prefix"] = _prepends_space(data)
    else:
        meta["model"] = "gpt2"
        meta["pre"] = _pre_tokenizer_name(data.get("pre_tokenizer"))
        meta["merges"] = merges
    meta["types"] = types

    cfg_path = folder / "tokenizer_config.json"
    cfg = read_json(cfg_path, "tokenizer_config.json") if cfg_path.is_file() else {}

    def special_id(key: str, fallback: int | None) -> int | None:
        value = cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        return vocab.get(value, fallback) if isinstance(value, str) else fallback

    meta["bos"] = special_id("bos_token", config.bos_token_id)
    meta["eos"] = special_id("eos_token", config.eos_token_id[0] if config.eos_token_id else None)
    meta["unk"] = vocab.get(unk) if unk else None
    meta["pad"] = special_id("pad_token", config.pad_token_id)
    if "add_bos_token" in cfg:
        meta["add_bos"] = bool(cfg["add_bos_token"])
    else:  # does the tokenizer's own template for a single text start with the BOS token?
        post = data.get("post_processor") or {}
        processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        firsts = [p["single"][0].get("SpecialToken", {}).get("id") for p in processors if p.get("single")]
        meta["add_bos"] = meta["bos"] is not None and tokens[meta["bos"]] in firsts
    template = cfg.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    meta["chat_template"] = template
    return meta


# Conversion ------------------------------------------------------------------------------------


def _out_type(hf_name: str, shape: tuple[int, ...], outtype: str):
    """The GGML type a tensor is written as: norms stay F32, matrices take the requested type."""
    from gguf import GGMLQuantizationType as T

    if len(shape) == 1 or outtype == "f32":
        return T.F32
    if outtype == "q8_0" and shape[-1] % 32 != 0:
        return T.F16  # Q8_0 needs rows in blocks of 32; llama.cpp's converter falls back the same way
    return {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[outtype]


def _encode(array: np.ndarray, qtype) -> np.ndarray:
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    if qtype == T.F32:
        return array.astype(np.float32)
    if qtype == T.F16:
        return array.astype(np.float16)
    return quantize(array.astype(np.float32), qtype)


def convert_hf_to_gguf(
    folder: Path,
    out_path: Path,
    outtype: str = "f16",
    progress: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> Path:
    """Write out_path from the checkpoint in folder; progress(done, total, tensor_name) per tensor."""
    import gguf
    from safetensors import safe_open

    folder, out_path = Path(folder), Path(out_path)
    _check_output(out_path, outtype, force)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder; pass the HF checkpoint folder (config.json, *.safetensors)")
    config = load_hf_config(folder)
    vocab = tokenizer_metadata(folder, config)
    files = safetensors_files(folder)
    arch = "minicpm" if config.is_minicpm else "llama"

    # Where every tensor lives and its shape, without reading it yet.
    located: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                if not name.endswith("rotary_emb.inv_freq"):
                    located[name] = (path, tuple(f.get_slice(name).get_shape()))
    if config.tie_word_embeddings:
        located.pop("lm_head.weight", None)

    plan = []  # (gguf name, shape [out, in] or [n], GGML type, hf name or None for RoPE factors)
    for hf_name in sorted(located, key=_tensor_order):
        shape = located[hf_name][1]
        plan.append((gguf_tensor_name(hf_name), shape, _out_type(hf_name, shape, outtype), hf_name))
    if config.rope_type == "longrope":
        half = (config.head_dim // 2,)
        plan.append(("rope_factors_long.weight", half, gguf.GGMLQuantizationType.F32, None))
        plan.append(("rope_factors_short.weight", half, gguf.GGMLQuantizationType.F32, None))

    def tensor_data(hf_name: str | None, gg_name: str) -> np.ndarray:
        if hf_name is None:  # LongRoPE factors come from the config
            key = "long_factor" if "long" in gg_name else "short_factor"
            return np.asarray(config.rope_scaling[key], dtype=np.float32)
        with safe_open(str(located[hf_name][0]), framework="pt") as f:
            w = f.get_tensor(hf_name).float()
        if hf_name.endswith("q_proj.weight"):
            w = permute_rope_rows(w, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = permute_rope_rows(w, config.num_key_value_heads)
        return w.numpy()

    def metadata(writer) -> None:
        _write_metadata(writer, config, vocab, folder.name, outtype)

    write_gguf(out_path, arch, metadata, plan, tensor_data, progress)
    return out_path


def retype_gguf(
    src: Path,
    out_path: Path,
    outtype: str = "f32",
    progress: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> Path:
    """Rewrite a GGUF with its matrices in another type (f32 to compare kernels on identical weights).

    Metadata is copied as it is; every tensor is dequantized exactly (gguf.quants) and re-encoded.
    """
    from runtime.gguf_model import GGUFModelFile

    src, out_path = Path(src), Path(out_path)
    _check_output(out_path, outtype, force)
    source = GGUFModelFile(src)
    plan = []
    for t in source.reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        plan.append((t.name, shape, _out_type(t.name, shape, outtype), t))

    def metadata(writer) -> None:
        copy_metadata(source.reader, writer, skip={"general.file_type"})
        writer.add_file_type(FILE_TYPES[outtype])

    write_gguf(out_path, source.architecture, metadata, plan, lambda t, _: source._dequantize(t), progress)
    return out_path


def copy_metadata(reader, writer, skip: set[str] = frozenset()) -> None:
    """Every metadata key of a GGUFReader into a GGUFWriter, with its type, except the file's own
    bookkeeping (GGUF.*), the architecture (the writer sets it) and the keys in skip."""
    import gguf

    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in skip:
            continue
        kind = fld.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, fld.contents(), kind, sub_type=fld.types[-1])
        else:
            writer.add_key_value(key, fld.contents(), kind)


def _check_output(out_path: Path, outtype: str, force: bool) -> None:
    """Refuse a bad output before any work: conversions of large models take minutes."""
    if outtype not in OUT_TYPES:
        raise UnsupportedModelError(f"unknown --outtype '{outtype}' (choose one of: {', '.join(OUT_TYPES)})")
    if out_path.is_dir():
        raise MiniCPMError(f"{out_path} is a folder; name the .gguf file to write, e.g. {out_path / 'model.gguf'}")
    if out_path.exists() and not force:
        raise MiniCPMError(f"{out_path} already exists; pass --force to overwrite it or choose another name")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MiniCPMError(f"cannot create the folder for {out_path}: {exc.strerror}") from None
    if not os.access(out_path.parent, os.W_OK):
        raise MiniCPMError(f"cannot write into {out_path.parent} (permission denied); choose another location")


def write_gguf(out_path: Path, arch: str, metadata, plan, tensor_data, progress) -> None:
    """Stream a GGUF to out_path atomically.

    plan: (gguf name, shape [out, in] or [n], GGML type, handle) per tensor, in file order;
    tensor_data(handle, name) returns its float32 values. Metadata and tensor infos go first, then
    each tensor is produced, encoded and written, so at most one tensor is in memory at a time.
    """
    import gguf

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".partial", dir=out_path.parent)
    except OSError as exc:
        raise MiniCPMError(f"cannot write {out_path}: {exc.strerror}") from None
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, arch)
        metadata(writer)
        for name, shape, qtype, _ in plan:
            # Float types are described by their element shape, block types by their byte shape.
            dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(qtype, np.uint8)
            stored = shape if dtype is not np.uint8 else gguf.quants.quant_shape_to_byte_shape(shape, qtype)
            nbytes = int(np.prod(stored)) * np.dtype(dtype).itemsize
            writer.add_tensor_info(name, stored, np.dtype(dtype), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, (name, _, qtype, handle) in enumerate(plan, 1):
            writer.write_tensor_data(_encode(tensor_data(handle, name), qtype))
            if progress:
                progress(done, len(plan), name)
        writer.close()
        os.replace(tmp_name, out_path)
    except OSError as exc:  # disk full, file system gone: say so, leave nothing half-written
        Path(tmp_name).unlink(missing_ok=True)
        raise MiniCPMError(f"writing {out_path} failed: {exc.strerror or exc}; nothing was written") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _tensor_order(name: str) -> tuple:
    """Embeddings first, then layers in numeric order, then the final norm and head (llama.cpp's order)."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)


def _write_metadata(writer, config: ModelConfig, vocab: dict, name: str, outtype: str) -> None:
    import gguf

    c = config
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)
    if c.head_dim != c.hidden_size // c.num_attention_heads:
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    writer.add_vocab_size(len(vocab["tokens"]))
    if c.is_minicpm:
        writer.add_embedding_scale(c.embedding_scale)
        writer.add_residual_scale(c.residual_scale)
        writer.add_logit_scale(c.logit_divisor)  # llama.cpp divides the logits by it
    if c.rope_type == "longrope":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        writer.add_rope_scaling_orig_ctx_len(c.original_max_position_embeddings)
        writer.add_rope_scaling_attn_factors(c.rope_attention_factor)
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model(vocab["model"])
    if "pre" in vocab:
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
        writer.add_add_space_prefix(vocab["add_space_prefix"])
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if vocab.get(key) is not None:
            add(vocab[key])
    writer.add_add_bos_token(vocab["add_bos"])
    if vocab.get("chat_template"):
        writer.add_chat_template(vocab["chat_template"])
    if len(c.eos_token_id) > 1:  # MiniCPM4 stops on [2, 73440]: the second becomes the end-of-turn id
        extra = [t for t in c.eos_token_id if t != vocab.get("eos")]
        if extra:
            writer.add_eot_token_id(extra[0])

