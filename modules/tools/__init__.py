"""Tool calling, the model side: what tools a request offers, how the model sees them, and reading the
calls back out of what it writes.

    spec.py     OpenAI function tools and `tool_choice`, checked (errors name the field and the tool)
    formats.py  the call formats of model families (Hermes/Qwen, Llama 3.x, Mistral, generic): which one a
                chat template uses, parsing a finished answer, the grammar of a forced call
    stream.py   the streaming parser: answer text in, content and growing calls out (OpenAI deltas)
    prompt.py   how tools and tool traffic reach a chat template (its own `tools=`, or the generic prompt)

The pipeline (modules/generation.py) uses these for every request with `tools`; the API and the Chat tab
only pass tools in and read `Update.tool_calls` out. Nothing here runs a tool. See docs/tools.md.
"""
