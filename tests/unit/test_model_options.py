"""Loader options: validation and what they turn into for from_pretrained (no GPU needed)."""

import pytest
import torch
from pydantic import ValidationError

from modules.loaders.base import LoadError
from modules.loaders.options import LlamaCppOptions, RemoteOptions, TransformersOptions
from modules.loaders.registry import LOADERS
from modules.loaders.transformers import load_kwargs


def test_4bit_options_become_a_bitsandbytes_config(tmp_path):
    kwargs = load_kwargs(TransformersOptions(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                             bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype="bfloat16"),
                         tmp_path, trust_remote_code=False)
    quant = kwargs["quantization_config"]
    assert quant.load_in_4bit and not quant.load_in_8bit
    assert quant.bnb_4bit_quant_type == "fp4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype == torch.bfloat16
    assert "trust_remote_code" not in kwargs


def test_8bit_loads_fp16_activations_and_not_both(tmp_path):
    kwargs = load_kwargs(TransformersOptions(load_in_8bit=True), tmp_path, False)
    assert kwargs["quantization_config"].load_in_8bit and kwargs["dtype"] == torch.float16
    with pytest.raises(LoadError, match="8-bit or 4-bit"):
        load_kwargs(TransformersOptions(load_in_8bit=True, load_in_4bit=True), tmp_path, False)


def test_quantized_weights_may_offload_only_when_limits_ask_for_it(tmp_path):
    # Without the fp32-offload flag Transformers refuses to put any layer of a quantized model on the CPU.
    plain = load_kwargs(TransformersOptions(load_in_8bit=True), tmp_path, False)["quantization_config"]
    assert not plain.llm_int8_enable_fp32_cpu_offload
    for options in (TransformersOptions(load_in_8bit=True, max_gpu_memory="1GiB"),
                    TransformersOptions(load_in_4bit=True, disk_offload=True)):
        assert load_kwargs(options, tmp_path, False)["quantization_config"].llm_int8_enable_fp32_cpu_offload


def test_a_gpu_limit_alone_offloads_to_cpu_not_to_an_unnamed_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    memory = load_kwargs(TransformersOptions(max_gpu_memory="10 GiB"), tmp_path, False)["max_memory"]
    assert memory[0] == memory[1] == "10GiB"
    assert memory["cpu"].endswith("MiB") and int(memory["cpu"][:-3]) > 0
    both = load_kwargs(TransformersOptions(max_gpu_memory="10GiB", max_cpu_memory="3GiB"), tmp_path, False)
    assert both["max_memory"]["cpu"] == "3GiB"


def test_memory_limits_and_offload_use_accelerate_placement(tmp_path):
    kwargs = load_kwargs(TransformersOptions(max_cpu_memory="2GiB", disk_offload=True), tmp_path, False)
    assert kwargs["max_memory"] == {"cpu": "2GiB"}
    assert kwargs["device_map"] == "auto" and kwargs["offload_folder"] == str(tmp_path)
    with pytest.raises(ValidationError):
        TransformersOptions(max_gpu_memory="lots")


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        assert load_kwargs(TransformersOptions(device_map="cuda"), tmp_path, False)["device_map"] == "cuda"
    else:
        with pytest.raises(LoadError, match="no CUDA GPU"):
            load_kwargs(TransformersOptions(device_map="cuda"), tmp_path, False)


def test_trust_remote_code_cannot_come_from_options():
    for model in (spec.options for spec in LOADERS.values()):
        assert "trust_remote_code" not in model.model_fields
        with pytest.raises(ValidationError):
            model(trust_remote_code=True)


def test_other_loaders_validate_their_fields():
    assert LlamaCppOptions(tensor_split="60,40").tensor_split == "60,40"
    with pytest.raises(ValidationError):
        LlamaCppOptions(tensor_split="../../x")
    with pytest.raises(ValidationError):
        RemoteOptions(base_url="file:///etc/passwd")
