"""JSON in and out the way Go's encoding/json does it, so that clients see what real Toxiproxy sends.

Decoding follows Go's rules where clients can tell the difference:
- only the first JSON value of a body is read (trailing bytes are ignored, as `json.Decoder.Decode` does);
- object keys match struct fields exactly or, failing that, case-insensitively; a later key wins;
- unknown keys are ignored; `null` leaves a field unchanged;
- a value of the wrong JSON type is an error (`json: cannot unmarshal string into Go struct field …`),
  which the API answers with 400 `bad request body: …`, never 500.

Encoding is compact, UTF-8, with `<`, `>`, `&`, U+2028 and U+2029 escaped, and whole floats written as
integers (Go writes float32 1.0 as `1`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Final

from . import errors, limits

_decoder: Final = json.JSONDecoder(parse_constant=lambda name: _reject_constant(name))
_whitespace: Final = " \t\r\n"


def _reject_constant(name: str) -> object:
    # Python's decoder accepts NaN and Infinity; JSON (and Go) do not.
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def decode_body(body: bytes) -> object:
    """Return the first JSON value of a request body; raise 400 `bad request body: …` if there is none."""
    text = body.decode("utf-8", errors="replace")
    start = 0
    while start < len(text) and text[start] in _whitespace:
        start += 1
    if start == len(text):
        raise errors.bad_request_body("EOF")
    try:
        value, _end = _decoder.raw_decode(text, start)
    except ValueError as error:  # json.JSONDecodeError is a ValueError, and so is _reject_constant's.
        raise errors.bad_request_body(str(error)) from error
    return value


def json_kind(value: object) -> str:
    """Go's name for the JSON type of a decoded value, as used in its unmarshal errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    assert isinstance(value, dict), type(value)
    return "object"


def _type_error(value: object, struct: str, field: str, go_type: str) -> errors.ApiError:
    """Go's UnmarshalTypeError text: `into Go struct field S.f of type T`, or `into Go value of type T`."""
    kind = json_kind(value)
    if kind == "number":
        kind = f"number {json.dumps(value)}"
    where = f"Go struct field {struct}.{field}" if field else "Go value"
    return errors.bad_request_body(f"json: cannot unmarshal {kind} into {where} of type {go_type}")


def as_object(value: object, go_type: str, struct: str = "", field: str = "") -> Mapping[str, object] | None:
    """A JSON object, or None for null (a whole body if `field` is empty, else a struct field). Else 400."""
    if value is None or isinstance(value, dict):
        return value
    raise _type_error(value, struct, field, go_type)


def as_array(value: object, go_type: str) -> list[object] | None:
    if value is None or isinstance(value, list):
        return value
    raise _type_error(value, "", "", go_type)


def fields(obj: Mapping[str, object], names: tuple[str, ...]) -> dict[str, object]:
    """Pick struct fields out of an object as Go matches keys: exact, else case-insensitive; last wins."""
    folded = {name.casefold(): name for name in names}
    picked: dict[str, object] = {}
    for key, value in obj.items():
        name = key if key in names else folded.get(key.casefold())
        if name is not None:
            picked[name] = value
    return picked


def as_string(value: object, struct: str, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _type_error(value, struct, field, "string")


def as_bool(value: object, struct: str, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(value, struct, field, "bool")


def as_int64(value: object, struct: str, field: str) -> int | None:
    # bool is an int subclass in Python but a different JSON type; floats (even 1.0) fail in Go too.
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if limits.attribute_value_min <= value <= limits.attribute_value_max:
            return value
    raise _type_error(value, struct, field, "int64")


def as_float32(value: object, struct: str, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and abs(number) <= limits.float32_abs_max:
            return number
    raise _type_error(value, struct, field, "float32")


def go_float(value: float) -> float | int:
    """A float32 field as Go writes it: whole numbers without a fraction (toxicity 1.0 is `1`)."""
    if value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def encode(document: object) -> bytes:
    """Go's json.Marshal output for a response document."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # These characters only ever occur inside JSON strings, so replacing them everywhere is safe.
    text = (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
    return text.encode("utf-8")
