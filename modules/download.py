"""Download a model or LoRA from the Hugging Face Hub into models/ or loras/.

    .venv/bin/python download-model.py USER/REPO[:BRANCH] [--specific-file F] [--gguf-quant Q4_K_M] [--allow-code]

Uses huggingface_hub (resumes interrupted files; HF_TOKEN and HF_ENDPOINT are honoured). What is
fetched: a GGUF repo gives one quant (chosen by --gguf-quant or --specific-file; several without a
choice is an error listing them); a repo with `adapter_config.json` is a LoRA and goes to loras/;
anything else is a Transformers folder, safetensors preferred over .bin, and `.py` files (remote
code) skipped unless --allow-code.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.paths import UnsafeName, safe_child

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_BRANCH = re.compile(r"^[\w.\-/]{1,100}$")
_SKIP_ALWAYS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "original/*", ".gitattributes"]


class DownloadError(ValueError):
    """A repository spec or choice that cannot be downloaded; the message says why."""


@dataclass(frozen=True)
class Plan:
    repo: str
    revision: str
    target: Path
    kind: str  # "transformers", "gguf" or "lora"
    allow: list[str] | None
    ignore: list[str]


def parse_spec(spec: str) -> tuple[str, str]:
    repo, _, branch = spec.strip().partition(":")
    if repo.startswith("https://huggingface.co/"):
        repo = repo.removeprefix("https://huggingface.co/").strip("/")
    if not _REPO.match(repo) or ".." in repo:
        raise DownloadError(f"{repo!r} is not a Hub repository (USER/REPO)")
    branch = branch or "main"
    if not _BRANCH.match(branch) or ".." in branch:
        raise DownloadError(f"{branch!r} is not a branch name")
    return repo, branch


def plan(repo: str, revision: str, files: list[str], models_dir: Path, loras_dir: Path,
         specific_file: str | None = None, gguf_quant: str | None = None, allow_code: bool = False) -> Plan:
    """Decide what to fetch and where, from the repository's file list."""
    folder_name = repo.replace("/", "_")
    if specific_file:
        if specific_file not in files:
            raise DownloadError(f"{repo} has no file {specific_file!r}")
        kind = "gguf" if specific_file.endswith(".gguf") else "transformers"
        allow = [specific_file] + ([specific_file.replace("-00001-of-", "-*-of-")] if "-00001-of-" in specific_file else [])
        target_root = models_dir if kind == "gguf" else models_dir / folder_name
        return Plan(repo, revision, _safe(target_root, models_dir), kind, allow, [])
    if "adapter_config.json" in files:
        return Plan(repo, revision, _safe(loras_dir / folder_name, loras_dir), "lora", None,
                    _SKIP_ALWAYS + ([] if allow_code else ["*.py"]))
    ggufs = [f for f in files if f.endswith(".gguf") and (not re.search(r"-\d{5}-of-\d{5}\.gguf$", f)
                                                          or "-00001-of-" in f)]
    has_weights = "config.json" in files and any(f.endswith((".safetensors", ".bin")) for f in files)
    if ggufs and not has_weights:
        chosen = [f for f in ggufs if gguf_quant and gguf_quant.lower() in f.lower()] if gguf_quant else ggufs
        if len(chosen) != 1:
            raise DownloadError(f"{repo} has {len(ggufs)} GGUF files and {len(chosen)} match: choose one with "
                                f"--gguf-quant or --specific-file: {', '.join(ggufs)}")
        first = chosen[0]
        allow = [first.replace("-00001-of-", "-*-of-")] if "-00001-of-" in first else [first]
        return Plan(repo, revision, _safe(models_dir, models_dir), "gguf", allow, [])
    if "config.json" not in files:
        raise DownloadError(f"{repo} has neither config.json nor .gguf files: not a model Parlour can load")
    ignore = list(_SKIP_ALWAYS) + ["*.gguf"]
    if any(f.endswith(".safetensors") for f in files):
        ignore += ["*.bin", "*.pt", "*.pth"]  # safetensors preferred: no pickles when we can avoid them
    if not allow_code:
        ignore.append("*.py")
    return Plan(repo, revision, _safe(models_dir / folder_name, models_dir), "transformers", None, ignore)


def _safe(path: Path, root: Path) -> Path:
    if path == root:
        return path
    try:
        return safe_child(root, path.name)
    except UnsafeName as exc:
        raise DownloadError(str(exc)) from exc


def selected(files: list[str], chosen: Plan) -> list[str]:
    """The files a plan fetches (for reporting and tests)."""
    keep = [f for f in files if chosen.allow is None or any(fnmatch.fnmatch(f, p) for p in chosen.allow)]
    return [f for f in keep if not any(fnmatch.fnmatch(f, p) for p in chosen.ignore)]


def download(spec: str, models_dir: Path, loras_dir: Path, specific_file: str | None = None,
             gguf_quant: str | None = None, allow_code: bool = False, tqdm_class: Any = None) -> tuple[Plan, list[str]]:
    """Fetch what `plan` chose; return the plan and the files fetched."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    repo, revision = parse_spec(spec)
    api = HfApi()
    try:
        info = api.model_info(repo, revision=revision)
    except HfHubHTTPError as exc:
        raise DownloadError(f"{repo}@{revision}: {str(exc).splitlines()[0]}") from exc
    files = [s.rfilename for s in info.siblings or []]
    chosen = plan(repo, revision, files, models_dir, loras_dir, specific_file, gguf_quant, allow_code)
    chosen.target.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(repo, revision=revision, local_dir=chosen.target, allow_patterns=chosen.allow,
                          ignore_patterns=chosen.ignore, tqdm_class=tqdm_class)
    except HfHubHTTPError as exc:
        raise DownloadError(f"{repo}@{revision}: {str(exc).splitlines()[0]}") from exc
    return chosen, selected(files, chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download a model or LoRA from the Hugging Face Hub.")
    parser.add_argument("repo", help="USER/REPO or USER/REPO:BRANCH")
    parser.add_argument("--specific-file", help="fetch only this file (e.g. one GGUF quant)")
    parser.add_argument("--gguf-quant", help="for GGUF repos: the quant to fetch, e.g. Q4_K_M")
    parser.add_argument("--allow-code", action="store_true", help="also fetch .py files (remote code)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--loras-dir", type=Path, default=Path("loras"))
    args = parser.parse_args(argv)
    try:
        chosen, fetched = download(args.repo, args.models_dir, args.loras_dir, args.specific_file, args.gguf_quant,
                                   args.allow_code)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{chosen.kind}: {len(fetched)} files in {chosen.target}")
    return 0
