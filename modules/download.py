"""Download a model or LoRA from the Hugging Face Hub into models/ or loras/.

    .venv/bin/python download-model.py USER/REPO[:BRANCH] [--specific-file F] [--gguf-quant Q4_K_M] [--allow-code]

Uses huggingface_hub (resumes interrupted files; HF_TOKEN and HF_ENDPOINT are honoured). What is
fetched: a GGUF repo gives one quant (chosen by --gguf-quant or --specific-file; several without a
choice is an error listing them); a repo with `adapter_config.json` is a LoRA and goes to loras/;
anything else is a Transformers folder, safetensors preferred over .bin, and `.py` files (remote
code) skipped unless --allow-code.

Files arrive in `<target>.partial` (which no model list shows) and move into place only once all
of them are there, so a half-downloaded model never appears in a dropdown.

In the server, `Downloads` runs each download as a background job (a child process at low priority),
with progress and cancellation, so chats and API requests go on meanwhile (text-generation-webui
#1763: there a download held the UI's one lock).
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.fileio import os_reason
from modules.paths import UnsafeName, safe_child

log = logging.getLogger(__name__)

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_BRANCH = re.compile(r"^[\w.\-/]{1,100}$")
_SKIP_ALWAYS = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "original/*", ".gitattributes"]


class DownloadError(ValueError):
    """A repository spec or choice that cannot be downloaded; the message says why."""


class DownloadCancelled(Exception):
    """Raised inside the transfer (from its progress callback) when the job was cancelled."""


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


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when it cannot reach the Hub at all (its HTTP client is httpx2)."""
    import httpx2

    return httpx2.TransportError, ConnectionError, TimeoutError


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failure(exc: BaseException, repo: str, revision: str, endpoint: str | None) -> DownloadError:
    """One line for the user: what the Hub said, or that it cannot be reached (which address), or why
    the files could not be written."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        return DownloadError(f"{repo}@{revision}: {_reason(exc)}")
    if isinstance(exc, _network_errors()):
        return DownloadError(f"cannot reach the Hugging Face Hub ({endpoint or constants.ENDPOINT}): {_reason(exc)}")
    return DownloadError(f"could not write the files of {repo}: {os_reason(exc) if isinstance(exc, OSError) else exc}")


def download(spec: str, models_dir: Path, loras_dir: Path, specific_file: str | None = None,
             gguf_quant: str | None = None, allow_code: bool = False, tqdm_class: Any = None,
             endpoint: str | None = None) -> tuple[Plan, list[str]]:
    """Fetch what `plan` chose; return the plan and the files fetched. Every failure is a DownloadError
    with a one-line message (DownloadCancelled passes through from `tqdm_class`). `endpoint`: the Hub's
    URL (default: HF_ENDPOINT as huggingface_hub read it at import)."""
    from huggingface_hub import HfApi, snapshot_download

    repo, revision = parse_spec(spec)
    expected = (OSError, *_network_errors())  # HfHubHTTPError is an OSError too
    try:
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision)
    except expected as exc:
        raise _failure(exc, repo, revision, endpoint) from exc
    files = [s.rfilename for s in info.siblings or []]
    chosen = plan(repo, revision, files, models_dir, loras_dir, specific_file, gguf_quant, allow_code)
    fetched = selected(files, chosen)
    root = chosen.target if chosen.kind == "gguf" else chosen.target.parent  # models/ (or loras/)
    partial = root / partial_name(repo)
    try:
        partial.mkdir(parents=True, exist_ok=True)
        snapshot_download(repo, revision=revision, local_dir=partial, allow_patterns=chosen.allow,
                          ignore_patterns=chosen.ignore, tqdm_class=tqdm_class, endpoint=endpoint)
        _move_into_place(partial, chosen.target, fetched)
    except expected as exc:
        raise _failure(exc, repo, revision, endpoint) from exc
    return chosen, fetched


def partial_name(repo: str) -> str:
    """The folder a download of `repo` fills before it moves into place (no model list shows it)."""
    return f"{repo.replace('/', '_')}.partial"


def _move_into_place(partial: Path, target: Path, files: list[str]) -> None:
    """Move a finished download from its .partial folder to where the model lists look."""
    if not target.exists():
        partial.rename(target)  # one step: the folder appears whole
        return
    # Into an existing folder (models/ itself for GGUF files, or an update of a model): file by file,
    # the first part of a split GGUF last, so a listed model is always complete.
    for name in sorted(files, key=lambda f: "-00001-of-" in f):
        source = partial / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target / name)
    shutil.rmtree(partial, ignore_errors=True)


# -- background jobs (the Model tab) ----------------------------------------------------------------
def progress_of(bars: list[Any]) -> tuple[int, int, int, int]:
    """(bytes done, bytes in all, files done, files in all) from the progress bars huggingface_hub opened
    (bytes bars, and one counting files); see _progress_class."""
    byte_bars = [b for b in bars if b.unit_name == "B"]
    file_bars = [b for b in bars if b.unit_name != "B"]
    done = max((int(b.counted) for b in byte_bars), default=0)
    total = max((int(b.total or 0) for b in byte_bars), default=0)
    files = max(((int(b.counted), int(b.total or 0)) for b in file_bars), default=(0, 0))
    return done, max(total, done), files[0], files[1]


def _progress_class(bars: list[Any], cancel: threading.Event | None = None) -> type:
    """A tqdm class for huggingface_hub that records its bars in `bars` (and stops the transfer once
    `cancel` is set: the next chunk raises DownloadCancelled). It prints nothing."""
    from tqdm import tqdm

    class JobProgress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True  # tqdm keeps `total` (which huggingface_hub grows as it learns sizes)
            super().__init__(*args, **kwargs)
            self.unit_name = kwargs.get("unit", "it")
            self.counted = kwargs.get("initial", 0) or 0
            bars.append(self)

        def update(self, n: float | None = 1) -> bool | None:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled()
            self.counted += n or 0
            return super().update(n)

    return JobProgress


@dataclass
class DownloadJob:
    """One download running in the background; `snapshot()` is what the UI shows."""

    id: int
    spec: str
    state: str = "running"  # running, done, failed, cancelled
    message: str = ""
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event)
    #: (bytes done, bytes in all, files done, files in all), as the transfer last reported them
    progress: tuple[int, int, int, int] = (0, 0, 0, 0)
    process: subprocess.Popen | None = None

    def snapshot(self) -> dict[str, Any]:
        done, total, files_done, files = self.progress
        return {"id": self.id, "spec": self.spec, "state": self.state, "message": self.message,
                "bytes_done": done, "bytes_total": total, "files_done": files_done, "files_total": files,
                "fraction": (done / total) if total else (1.0 if self.state == "done" else 0.0)}


class Downloads:
    """Downloads running in the background of the server, newest first, with progress and cancel.

    Each transfer runs in a child process (`python -m modules.download --background`) at a lower CPU
    priority, which reports its progress as JSON lines. In a thread of the server it took the GIL a
    thousand times a second for the Hub client's chunks and the file writes, and on a 2-core machine a
    fast download halved a chat's tokens per second (bench/download_stream.py); a process of its own
    shares neither the GIL nor, at nice 10, the cores the model needs. Cancelling ends the process."""

    KEEP = 20  # finished jobs shown

    def __init__(self, models_dir: Path, loras_dir: Path) -> None:
        self.models_dir, self.loras_dir = models_dir, loras_dir
        self._lock = threading.Lock()
        self._jobs: list[DownloadJob] = []
        self._ids = itertools.count(1)

    def start(self, spec: str, choice: str = "", allow_code: bool = False) -> DownloadJob:
        """Start downloading `spec`; `choice` is a file name (has a dot) or a GGUF quant. A spec that is
        not a repository name is refused at once (DownloadError)."""
        parse_spec(spec)
        choice = (choice or "").strip()
        job = DownloadJob(next(self._ids), spec.strip())
        command = [sys.executable, "-m", "modules.download", job.spec, "--background",
                   "--models-dir", str(self.models_dir), "--loras-dir", str(self.loras_dir)]
        if choice:
            command += ["--specific-file" if "." in choice else "--gguf-quant", choice]
        if allow_code:
            command.append("--allow-code")
        # The child reads HF_ENDPOINT, HF_TOKEN and HF_HOME from the environment as it is now.
        job.process = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with self._lock:
            self._jobs.insert(0, job)
            del self._jobs[self.KEEP:]
        threading.Thread(target=self._follow, args=(job,), name=f"download-{job.id}", daemon=True).start()
        return job

    def _follow(self, job: DownloadJob) -> None:
        """Read the child's reports until it ends; then the job's final state."""
        assert job.process is not None and job.process.stdout is not None
        last: dict[str, Any] = {}
        said = ""  # the child's last line that is not a report (a warning, a traceback's last line)
        # stderr comes on the same pipe: a second pipe nobody reads while this one is read could fill and
        # stop the child
        for line in job.process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                said = line.strip() or said
                continue
            if "progress" in report:
                job.progress = tuple(report["progress"])
            last = report
        code = job.process.wait()
        if job.cancel.is_set():
            self._discard(job)
            job.state, job.message = "cancelled", "cancelled; the partial files were removed"
        elif last.get("state") in ("done", "failed"):
            job.state, job.message = last["state"], last.get("message", "")
            if job.state == "done":
                job.progress = (job.progress[1], job.progress[1], job.progress[3], job.progress[3])
        else:  # a job must end with a state the UI can show, whatever happened to the child
            job.state, job.message = "failed", f"the download process ended ({code}): {said or 'no message'}"
        log.info("download %s: %s %s", job.spec, job.state, job.message)

    def _discard(self, job: DownloadJob) -> None:
        name = partial_name(parse_spec(job.spec)[0])
        for root in (self.models_dir, self.loras_dir):
            partial = root / name
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)

    def cancel(self, job_id: int | None = None) -> int:
        """Cancel a running job (None: all of them); how many were asked to stop. Its process ends now."""
        with self._lock:
            jobs = [j for j in self._jobs if j.state == "running" and job_id in (None, j.id)]
        for job in jobs:
            job.cancel.set()
            if job.process is not None and job.process.poll() is None:
                job.process.terminate()
        return len(jobs)

    def close(self) -> None:
        """End every running transfer (the server is stopping); their partial files stay, as after a crash."""
        with self._lock:
            jobs = [j for j in self._jobs if j.process is not None and j.process.poll() is None]
        for job in jobs:
            job.process.terminate()

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [j.snapshot() for j in self._jobs]

    def running(self) -> bool:
        with self._lock:
            return any(j.state == "running" for j in self._jobs)


def _end_with_parent() -> None:
    """Linux: this process gets SIGTERM when the server that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _background(args: argparse.Namespace) -> int:
    """The server's child: lower priority, progress and the outcome as JSON lines on stdout."""
    _end_with_parent()
    try:
        os.nice(10)
    except (OSError, AttributeError):
        pass
    bars: list[Any] = []
    done = threading.Event()

    def report(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    def reporter() -> None:
        while not done.wait(0.25):
            report(progress=progress_of(bars))

    threading.Thread(target=reporter, daemon=True).start()
    try:
        chosen, fetched = download(args.repo, args.models_dir, args.loras_dir, args.specific_file, args.gguf_quant,
                                   args.allow_code, tqdm_class=_progress_class(bars),
                                   endpoint=os.environ.get("HF_ENDPOINT"))
    except DownloadError as exc:
        done.set()
        report(state="failed", message=str(exc))
        return 2
    except Exception as exc:  # the server shows one line whatever happened
        done.set()
        report(state="failed", message=f"{type(exc).__name__}: {_reason(exc)}")
        return 1
    done.set()
    report(progress=progress_of(bars))
    report(state="done", message=f"{len(fetched)} files ({chosen.kind}) in {chosen.target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download a model or LoRA from the Hugging Face Hub.")
    parser.add_argument("repo", help="USER/REPO or USER/REPO:BRANCH")
    parser.add_argument("--specific-file", help="fetch only this file (e.g. one GGUF quant)")
    parser.add_argument("--gguf-quant", help="for GGUF repos: the quant to fetch, e.g. Q4_K_M")
    parser.add_argument("--allow-code", action="store_true", help="also fetch .py files (remote code)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--loras-dir", type=Path, default=Path("loras"))
    parser.add_argument("--background", action="store_true",
                        help="how the server runs a download: low priority, progress as JSON lines on stdout")
    args = parser.parse_args(argv)
    if args.background:
        return _background(args)
    try:
        chosen, fetched = download(args.repo, args.models_dir, args.loras_dir, args.specific_file, args.gguf_quant,
                                   args.allow_code)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{chosen.kind}: {len(fetched)} files in {chosen.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
