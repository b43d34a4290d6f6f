"""Reading GGUF files: every quant type the issue names, decoded correctly; bad files refused."""

import struct

import numpy as np
import pytest
import torch
from tiny_checkpoint import make_checkpoint

from benchmarks.parity import llama, llama_logits, torch_logits
from runtime.checkpoint import read_safetensors, safetensors_files
from runtime.convert import convert_hf_to_gguf
from runtime.errors import ModelLoadError, UnsupportedModelError
from runtime.gguf_model import GGUFModelFile
from runtime.loading import load_torch_model

# Relative RMS error of decoded weights against the float originals, per type (Gaussian weights).
# A decoding mistake (wrong block layout, shape order or q/k permutation) gives about 1.4.
QUANT_ERROR = {
    "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.06,
    "Q4_K": 0.12, "Q4_0": 0.15, "Q4_1": 0.12,
}


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """Rows of 256, so that K-quant super-blocks fit every matrix."""
    folder = make_checkpoint(tmp_path_factory.mktemp("wide") / "ckpt", hidden_size=256, intermediate_size=512)
    f32 = convert_hf_to_gguf(folder, folder.parent / "f32.gguf", outtype="f32")
    return folder, f32


def quantize_with_llama_cpp(src, dst, type_name: str):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    ftype = {"Q4_K": "Q4_K_S", "Q5_K": "Q5_K_S"}.get(type_name, type_name)  # with pure, _S is all one type
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.pure = True  # every matrix in this one type
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0
    return dst


@pytest.mark.parametrize("type_name", list(QUANT_ERROR))
def test_quant_types_decode_to_the_original_weights(wide_checkpoint, tmp_path, type_name, english_text):
    folder, f32 = wide_checkpoint
    path = quantize_with_llama_cpp(f32, tmp_path / f"{type_name}.gguf", type_name)
    gguf_file = GGUFModelFile(path)
    assert type_name in {t.tensor_type.name for t in gguf_file.tensors.values()}
    config = gguf_file.config()
    decoded = gguf_file.weights(config, torch.float32)
    original = read_safetensors(safetensors_files(folder))
    for name, w in original.items():
        err = (decoded[name] - w).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()
        assert err < QUANT_ERROR[type_name], (name, float(err))
    # And the decoded model computes what llama.cpp computes on the same file (llama.cpp rounds
    # activations inside its quantized matmuls, hence a looser bound than the f32 parity test).
    loaded = load_torch_model(str(path), dtype="float32")
    ids = loaded.tokenizer.encode(english_text)[:64]
    ours, theirs = torch_logits(loaded.model, ids), llama_logits(llama(path, 256), ids)
    assert np.abs(ours - theirs).mean() < 0.02 * theirs.std()


def test_not_a_gguf_file_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        GGUFModelFile(bad)


def test_a_truncated_gguf_is_refused(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        GGUFModelFile(cut)


def write_unsupported_architecture(path):
    import gguf

    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_architecture_names_itself_and_the_fallback(tmp_path):
    path = write_unsupported_architecture(tmp_path / "mamba.gguf")
    with pytest.raises(UnsupportedModelError, match=r"architecture 'mamba'.*--backend gguf"):
        GGUFModelFile(path).config()


def with_unknown_quant_type(src, dst, type_id: int = 200):
    """A copy of src whose first tensor claims a GGML type id that does not exist."""
    data = bytearray(src.read_bytes())
    first = GGUFModelFile(src).reader.tensors[0]
    name = first.name.encode()
    at = data.index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    dst.write_bytes(bytes(data))
    return dst


def test_an_unknown_quant_type_is_refused(tiny_gguf, tmp_path):
    path = with_unknown_quant_type(tiny_gguf, tmp_path / "weird.gguf")
    with pytest.raises(UnsupportedModelError, match="quantization type"):
        GGUFModelFile(path)


def copy_without_key(src, dst, dropped: str):
    """src rewritten with one metadata key left out (as older converters wrote their files)."""
    import gguf

    from runtime.convert import copy_metadata

    source = GGUFModelFile(src)
    writer = gguf.GGUFWriter(str(dst), source.architecture)
    copy_metadata(source.reader, writer, skip={dropped})
    for t in source.reader.tensors:
        writer.add_tensor(t.name, source._dequantize(t))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_longrope_factor_tensors_count_without_the_scaling_key(tiny_gguf, tmp_path):
    older = copy_without_key(tiny_gguf, tmp_path / "older.gguf", "minicpm.rope.scaling.type")
    assert GGUFModelFile(older).config().rope_type == "longrope"
    a, b = load_torch_model(str(tiny_gguf), "float32"), load_torch_model(str(older), "float32")
    x = torch.arange(3, 303)[None]
    torch.testing.assert_close(a.model(x), b.model(x))


def test_gguf_config_recovers_the_minicpm_scales(tiny_gguf, tiny_minicpm):
    from runtime.checkpoint import load_hf_config

    hf, gg = load_hf_config(tiny_minicpm), GGUFModelFile(tiny_gguf).config()
    assert gg.scale_emb == pytest.approx(hf.scale_emb)
    assert gg.residual_scale == pytest.approx(hf.residual_scale)
    assert gg.logit_divisor == pytest.approx(hf.logit_divisor)
    assert gg.rope_scaling["short_factor"] == pytest.approx(hf.rope_scaling["short_factor"])
    assert gg.rope_attention_factor == pytest.approx(hf.rope_attention_factor)
    assert gg.original_max_position_embeddings == 256
