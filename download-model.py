#!/usr/bin/env python3
"""Download a model or LoRA from the Hugging Face Hub: download-model.py USER/REPO[:BRANCH] (see --help)."""

from modules.download import main

if __name__ == "__main__":
    raise SystemExit(main())
