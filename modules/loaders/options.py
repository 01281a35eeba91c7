"""Load options, one pydantic model per loader (the registry, modules/loaders/registry.py, names them): the Model tab's controls, the API's `args` for
model/load, and `models/config-user.yaml` are all validated by these.

`trust_remote_code` is deliberately absent: it runs code from the model folder, so it comes only
from the command line (Settings), never from the browser, the API or a saved file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformersOptions(_Options):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype (auto: the checkpoint's on GPU, float32 on CPU)")
    device_map: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the weights go (auto: GPU if any)")
    max_gpu_memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?\s*(GiB|MiB|GB|MB)$",
                                       description="most memory per GPU before offloading to CPU, e.g. 10GiB")
    max_cpu_memory: str | None = Field(None, pattern=r"^\d+(\.\d+)?\s*(GiB|MiB|GB|MB)$",
                                       description="most CPU memory before offloading to disk, e.g. 32GiB")
    disk_offload: bool = Field(False, description="offload what does not fit to user_data/offload")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="attention kernel (flash_attention_2 needs the flash-attn package and a GPU)")
    load_in_8bit: bool = Field(False, description="bitsandbytes 8-bit weights (LLM.int8)")
    load_in_4bit: bool = Field(False, description="bitsandbytes 4-bit weights")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    bnb_4bit_use_double_quant: bool = Field(False, description="quantize the quantization constants too")
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float16", description="dtype the 4-bit matmuls compute in")
    context_length: int | None = Field(None, ge=16, le=1_048_576,
                                       description="override the context length from config.json")
    prompt_cache_mib: int = Field(1024, ge=0, le=1_048_576,
                                  description="memory (MiB, on the model's device) for keys/values of recent "
                                              "prompts, so a chat's next turn reads only the new tokens (0: off)")


class LlamaCppOptions(_Options):
    n_ctx: int = Field(4096, ge=16, le=1_048_576, description="context length (0 is not allowed: set it)")
    n_gpu_layers: int = Field(0, ge=-1, le=1000, description="layers on the GPU (-1: all)")
    threads: int | None = Field(None, ge=1, le=512, description="CPU threads (default: Parlour's --threads)")
    n_batch: int = Field(512, ge=1, le=65536, description="prompt tokens processed per batch")
    tensor_split: str | None = Field(None, pattern=r"^\d+(\.\d+)?(,\d+(\.\d+)?)*$",
                                     description="share of the model per GPU, e.g. 60,40")
    flash_attn: bool = Field(False, description="flash attention")
    use_mmap: bool = Field(True, description="memory-map the file")
    use_mlock: bool = Field(False, description="lock the model in RAM")


class RemoteOptions(_Options):
    base_url: str = Field("http://127.0.0.1:8000/v1", pattern=r"^https?://[^\s]+$",
                          description="OpenAI-compatible base URL (vLLM, TGI, llama.cpp server, Ollama, Parlour)")
    api_key: SecretStr | None = Field(None, description="Bearer key for that server")
    timeout: float = Field(600.0, gt=0, le=86400, description="seconds to wait for a reply")

