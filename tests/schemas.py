"""The published JSON Schemas, as validators (shared by the tests that check events against them)."""

import json
from importlib.resources import files

import jsonschema

SCHEMAS = files("slostream") / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    s = schema(name)
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s, format_checker=jsonschema.FormatChecker())
