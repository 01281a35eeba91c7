"""Twenty JSON schemas the constraint tests generate against (Transformers, llama.cpp, remote).

Free-text strings carry a maxLength: a barely trained test model rarely closes a string on its own, and
a constraint can only make a reply end in time when the schema says how long it may be. Everything else
(the shape, enums, numbers, patterns, formats) is left to the constraint alone."""

from __future__ import annotations

NAME = {"type": "string", "maxLength": 12}

SCHEMAS: dict[str, dict] = {
    "flat_object": {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0,
                                                                           "maximum": 120}},
                    "required": ["name", "age"], "additionalProperties": False},
    "nested_objects": {"type": "object", "properties": {"person": {
        "type": "object", "properties": {"name": NAME, "address": {
            "type": "object", "properties": {"city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}},
        "required": ["person"], "additionalProperties": False},
    "array_bounds": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                     "minItems": 2, "maxItems": 4},
    "array_of_objects": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 1000},
                                         "ok": {"type": "boolean"}},
        "required": ["id", "ok"], "additionalProperties": False}},
    "enums": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                               "size": {"enum": [1, 2, 3, None]}},
              "required": ["color", "size"], "additionalProperties": False},
    "const": {"type": "object", "properties": {"version": {"const": 2}, "kind": {"const": "card"}, "label": NAME},
              "required": ["version", "kind", "label"], "additionalProperties": False},
    "any_of": {"type": "object", "properties": {"value": {"anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 99}, {"type": "string", "maxLength": 5}]}},
        "required": ["value"], "additionalProperties": False},
    "one_of": {"oneOf": [
        {"type": "object", "properties": {"circle": {"type": "number", "minimum": 0, "maximum": 10}},
         "required": ["circle"], "additionalProperties": False},
        {"type": "object", "properties": {"square": {"type": "integer", "minimum": 1, "maximum": 10}},
         "required": ["square"], "additionalProperties": False}]},
    "refs_and_defs": {"$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -50, "maximum": 50}, "y": {"type": "integer", "minimum": -50, "maximum": 50}},
        "required": ["x", "y"], "additionalProperties": False},
        "segment": {"type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
                    "required": ["start", "end"], "additionalProperties": False}},
        "type": "object", "properties": {"line": {"$ref": "#/$defs/segment"}}, "required": ["line"],
        "additionalProperties": False},
    "string_pattern": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                                                        "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
                       "required": ["code", "hex"], "additionalProperties": False},
    "string_formats": {"type": "object", "properties": {"day": {"type": "string", "format": "date"},
                                                        "id": {"type": "string", "format": "uuid"},
                                                        "host": {"type": "string", "format": "ipv4"}},
                       "required": ["day", "id", "host"], "additionalProperties": False},
    "number_bounds": {"type": "object", "properties": {
        "temperature": {"type": "number", "minimum": -10, "maximum": 40},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "count": {"type": "integer", "minimum": 10, "maximum": 20}},
        "required": ["temperature", "ratio", "count"], "additionalProperties": False},
    "required_and_optional": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9},
                                                               "note": NAME, "flag": {"type": "boolean"}},
                              "required": ["id"], "additionalProperties": False},
    "no_additional_properties": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}},
                                 "additionalProperties": False},
    "booleans_and_null": {"type": "object", "properties": {"yes": {"type": "boolean"}, "nothing": {"type": "null"}},
                          "required": ["yes", "nothing"], "additionalProperties": False},
    "tuple": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 5}, {"type": "integer", "minimum": 0,
                                                                                   "maximum": 9},
                                               {"type": "boolean"}], "items": False, "minItems": 3},
    "all_of": {"properties": {"a": True, "b": True}, "additionalProperties": False, "allOf": [{"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
                          "required": ["a"]},
                         {"type": "object", "properties": {"b": {"enum": ["x", "y"]}}, "required": ["b"]}]},
    "nullable": {"type": "object", "properties": {"maybe": {"anyOf": [NAME, {"type": "null"}]},
                                                  "count": {"type": ["integer", "null"], "minimum": 0, "maximum": 5}},
                 "required": ["maybe", "count"], "additionalProperties": False},
    "string_lengths": {"type": "object", "properties": {"word": {"type": "string", "minLength": 3, "maxLength": 6}},
                       "required": ["word"], "additionalProperties": False},
    "nested_arrays": {"type": "object", "properties": {"grid": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
        "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}},
        "required": ["grid"], "additionalProperties": False},
}

#: the ones llama-cpp-python's schema converter can enforce (no number bounds, few formats: the others are
#: refused by name on that loader, see modules/loaders/llamacpp.py)
LLAMACPP_SCHEMAS = ["nested_objects", "enums", "const", "string_pattern", "no_additional_properties",
                    "booleans_and_null", "string_lengths"]
