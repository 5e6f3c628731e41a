"""Write the contracts' JSON Schema files (`python -m qcat.schemas.export`); a test keeps them in sync."""

from __future__ import annotations

import json
from pathlib import Path

from qcat.schemas.events import json_schemas

SCHEMA_DIR = Path(__file__).parent / "json"


def render() -> dict[str, str]:
    """File name -> file text for every contract."""
    return {
        f"{name}.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for name, schema in json_schemas().items()
    }


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        (SCHEMA_DIR / name).write_text(text, encoding="utf-8")
        print(SCHEMA_DIR / name)


if __name__ == "__main__":
    main()
