"""Bundle-named files for the ``-o`` rules' tests: the rules do not depend on what the files hold."""

from __future__ import annotations

from pathlib import Path

NEW_FILES = {"genai_config.json": "new", "model.onnx": "new model", "tokenizer.json": "{}"}


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder
