"""The contract's machine form: one JSON Schema (draft-07) per event type, and the catalogue's.

Files are named `<event_type>.schema.json`; `planshift.schema` compiles them.
"""

from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"
