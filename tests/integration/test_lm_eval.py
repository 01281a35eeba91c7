"""lm-evaluation-harness, the real program, against Parlour: `lm_eval --model local-completions` with its
default settings must give the same log-likelihoods as `lm_eval --model hf` on the same model folder.

The task is a small multiple-choice file written here (no dataset download): `dataset_path: json` and
`--include_path`. By default local-completions sends each context + continuation as token ids with
`echo: true`, `max_tokens: 1`, `logprobs: 1` and reads `token_logprobs[ctxlen:-1]`, so the server must
read the ids exactly and list one entry per token it counts, the generated one last — also when that
one is the end-of-sequence token (some chat-style choices here end where the micro model ends its turn).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import micro_server

CHAT = "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
DOCS = [
    {"question": "def main():\n    return", "choices": [" 0", " None", " main", " x"], "answer": 0},
    {"question": "import os\nimport", "choices": [" sys", " os", " re", " json"], "answer": 0},
    {"question": "for i in range(10):\n   ", "choices": [" print(i)", " pass", " break", " return"], "answer": 0},
    {"question": "class Point:\n    def __init__(self, x, y):\n        self.x =", "choices": [" x", " y", " 0", " self"],
     "answer": 0},
    {"question": CHAT.format(q="Hi"), "choices": ["Hello there.", "Sure.", "Yes.", "OK"], "answer": 0},
    {"question": CHAT.format(q="Can you help me?"), "choices": ["Yes.", "Sure.", "No", "Hello! How can I help you?"],
     "answer": 1},
]
TASK = """task: parlour_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""


def _lm_eval(tmp_path: Path, name: str, *model: str) -> dict[int, list[tuple[float, bool]]]:
    """Run the lm_eval command line; return each document's (log-likelihood, is_greedy) per choice."""
    out = tmp_path / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "lm_eval", *model, "--tasks", "parlour_mc", "--include_path",
                           str(tmp_path / "task"), "--log_samples", "--output_path", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    samples = [json.loads(line) for f in out.rglob("samples_parlour_mc_*.jsonl") for line in f.open()]
    assert len(samples) == len(DOCS)
    return {s["doc_id"]: [(float(r[0][0]), r[0][1] in (True, "True")) for r in s["resps"]] for s in samples}


@pytest.mark.timeout(1200)
def test_local_completions_matches_the_hf_backend(tmp_path, models_dir):
    (tmp_path / "task").mkdir()
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (tmp_path / "task" / "parlour_mc.yaml").write_text(TASK.format(data=data))
    folder = models_dir / "parlour-micro"
    server = micro_server(tmp_path, models_dir)
    try:
        # the case that went wrong before: the model's next token after a choice is its end of turn
        tokenizer_ids = httpx.post(server.url + "/v1/internal/encode",
                                   json={"text": DOCS[4]["question"] + "Sure."}).json()["tokens"]
        probe = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "prompt": [tokenizer_ids], "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}).json()
        assert probe["choices"][0]["logprobs"]["tokens"][-1] == "<|im_end|>"
        assert len(probe["choices"][0]["logprobs"]["tokens"]) == probe["usage"]["total_tokens"]
        served = _lm_eval(tmp_path, "api", "--model", "local-completions", "--model_args",
                          f"model=parlour-micro,base_url={server.url}/v1/completions,tokenizer={folder}")
    finally:
        server.stop()
    local = _lm_eval(tmp_path, "hf", "--model", "hf", "--model_args", f"pretrained={folder}", "--device", "cpu")
    for doc_id, choices in local.items():
        assert [g for _, g in served[doc_id]] == [g for _, g in choices], doc_id
        for (got, _), (want, _) in zip(served[doc_id], choices):
            assert got == pytest.approx(want, abs=1e-4), (doc_id, served[doc_id], choices)
