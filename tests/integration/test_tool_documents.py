"""The search_documents built-in tool reads the documents extension's library (the tiny BERT of
test_documents.py: identical text is the closest)."""

from __future__ import annotations

import json

from tests.integration.test_documents import NOTES, tiny_bert  # noqa: F401 (a fixture)


def test_search_documents_finds_the_passage(make_app, tiny_bert):  # noqa: F811
    app = make_app(extensions=["documents"], extension_params={
        "documents-model_path": str(tiny_bert), "documents-chunk_chars": 70, "documents-overlap_chars": 0})
    module = app.extensions.loaded["documents"].module
    module.clear()
    assert app.tools.call("search_documents", {"query": "x"}).content.startswith("no documents have been added")
    module.add_text("notes.md", NOTES)
    question = "The lighthouse keeper painted the door green every spring."
    result = app.tools.call("search_documents", json.dumps({"query": question, "top_k": 1}))
    found = json.loads(result.content)
    assert not result.error and len(found) == 1
    assert (found[0]["source"], found[0]["part"], found[0]["text"]) == ("notes.md", 2, question)
    module.clear()
