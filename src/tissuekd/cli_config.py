"""Types for values given on Snakemake's command line.

`snakemake --config "segmentation={'enabled': True, 'seeds': [0, 1]}"` parses the value with
YAML's BaseLoader, so every nested scalar arrives as a string ('True', '0') and the schema
rejects it. `typed` turns such strings into what the schema asks for at that place (boolean,
integer, number, null) before validation; strings the schema accepts as strings stay.
"""

from __future__ import annotations

import re
from typing import Any

BOOLEANS = {"true": True, "false": False, "yes": True, "no": False}


def typed(value: Any, schema: dict) -> Any:
    """`value` with every string converted to the type `schema` asks for there (in place for dicts)."""
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub:
                value[key] = typed(item, sub)
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [typed(item, schema["items"]) for item in value]
    if isinstance(value, str):
        return _scalar(value, schema)
    return value


def _scalar(value: str, schema: dict) -> Any:
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if "string" in types or not types:
        return value
    text = value.strip()
    if "boolean" in types and text.lower() in BOOLEANS:
        return BOOLEANS[text.lower()]
    if "integer" in types and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "null" in types and text.lower() in ("null", "none", "~", ""):
        return None
    return value


def config_problem(config: dict, schema: dict) -> str | None:
    """What is wrong with `config` under `schema`, in one line led by the dotted key
    (`niche.k: 'ten' is not of type 'array'`), or None; jsonschema picks the most relevant error."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    return f"{'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"


def repeated_keys(path: str) -> list[str]:
    """Keys given twice in one mapping of a YAML file, as `line N: key` (YAML keeps the last one
    silently: a second `survival:` block replaces the first whole)."""
    import yaml

    found = []

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value
                if key in seen:
                    found.append(f"line {key_node.start_mark.line + 1}: {key}")
                seen.add(key)
            return super().construct_mapping(node, deep)

    with open(path) as fh:
        yaml.load(fh, Loader=Loader)
    return found
