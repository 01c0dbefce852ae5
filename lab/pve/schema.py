"""The API schema subset: routing, and parameter checks ported from pve-common's JSONSchema.pm.

The checks follow ``check_prop``/``check_type`` rule for rule, in the same order (type,
format, pattern, maxLength, minLength, maximum/minimum, enum), with the same messages, so
a client that passes here passes on a real node and fails with the same per-parameter
error there. Booleans are strict as in PVE: a form value must be ``1`` or ``0`` (PVE
refuses ``true``; ``parse_boolean`` only applies on the command line); a JSON body may
also carry ``true``/``false``. Format errors carry PVE's trailing newline.

Routing follows ``RESTHandler::map_path_to_methods``: a ``{name}`` component matches
``\\S+``; the storage content ``{volume}`` takes the rest of the path, because PVE
registers that subclass with ``fragmentDelimiter => ''``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBSET = Path(__file__).resolve().parent / "schema-subset.json"
REST_OF_PATH = {"volume"}  # fragmentDelimiter '' in PVE::API2::Storage::Content

INTEGER = re.compile(r"^[+-]?\d+$")
NUMBER = re.compile(r"^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$")
MISSING = "property is missing and it is not optional"
UNKNOWN = (
    "property is not defined in schema and the schema does not allow additional properties"
)


@dataclass(frozen=True)
class Endpoint:
    """One method of one path, as the schema declares it."""

    method: str
    path: str
    parameters: dict[str, Any]
    returns: dict[str, Any]
    permissions: dict[str, Any]
    protected: bool
    allowtoken: bool
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        return dict(self.parameters.get("properties") or {})


def _route(path: str) -> re.Pattern[str]:
    """A regex for a path template; ``{volume}`` swallows the rest of the path like PVE."""
    parts = []
    for comp in path.strip("/").split("/"):
        name = comp[1:-1] if comp.startswith("{") else None
        if name is None:
            parts.append(re.escape(comp))
        else:
            body = r".+" if name in REST_OF_PATH else r"[^/\s]+"
            parts.append(f"(?P<{name}>{body})")
    return re.compile("^/" + "/+".join(parts) + "/*$")


class Schema:
    """The endpoints the emulator serves, read from ``schema-subset.json``."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    @classmethod
    def load(cls, source: Path = SUBSET) -> Schema:
        data = json.loads(source.read_text())
        return cls([_endpoint(e) for e in data["endpoints"]])

    def match(self, method: str, path: str) -> tuple[Endpoint | None, dict[str, str], bool]:
        """(endpoint, uri params, path known): a known path with another method is a 501 too."""
        known = False
        for endpoint in self.endpoints:
            found = endpoint.pattern.match(path)
            if not found:
                continue
            known = True
            if endpoint.method == method:
                return endpoint, dict(found.groupdict()), True
        return None, {}, known


# The API viewer folds indexed keys into ``net[n]``; these are qemu-server's limits.
INDEXED = {"net": 32, "scsi": 31, "ide": 4, "sata": 6, "virtio": 16, "unused": 256,
           "ipconfig": 32, "hostpci": 16, "usb": 14, "serial": 4, "parallel": 3, "numa": 8,
           "virtiofs": 10}


def _expanded(schema: dict[str, Any]) -> dict[str, Any]:
    """``net[n]`` becomes ``net0``..``net31``, as the server's schema has them."""
    properties = schema.get("properties")
    if not properties:
        return schema
    out: dict[str, Any] = {}
    for name, prop in properties.items():
        if name.endswith("[n]"):
            base = name[:-3]
            out.update({f"{base}{i}": prop for i in range(INDEXED.get(base, 32))})
        else:
            out[name] = prop
    return {**schema, "properties": out}


def _endpoint(raw: dict[str, Any]) -> Endpoint:
    return Endpoint(
        method=raw["method"],
        path=raw["path"],
        parameters=_expanded(raw.get("parameters") or {}),
        returns=_expanded_returns(raw.get("returns") or {}),
        permissions=raw.get("permissions") or {},
        protected=bool(raw.get("protected")),
        allowtoken=bool(raw.get("allowtoken", 1)),
        pattern=_route(raw["path"]),
    )


def _expanded_returns(returns: dict[str, Any]) -> dict[str, Any]:
    if returns.get("type") == "array" and isinstance(returns.get("items"), dict):
        return {**returns, "items": _expanded(returns["items"])}
    return _expanded(returns)


# --- parameter checks (JSONSchema.pm check_object / check_prop / check_type) ------------


def check_parameters(schema: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, str]:
    """Errors by parameter name, empty when the call is valid."""
    errors: dict[str, str] = {}
    properties = schema.get("properties") or {}
    for name, prop in properties.items():
        _check_prop(params.get(name), prop, name, errors)
    for name in params:
        prop = properties.get(name)
        if prop is not None:
            requires = prop.get("requires")
            if isinstance(requires, str) and params.get(requires) is None:
                _add(errors, requires, f"missing property required by '{name}'")
            continue
        if not schema.get("additionalProperties", 1):
            _add(errors, name, UNKNOWN)
    return errors


def _add(errors: dict[str, str], path: str, message: str) -> None:
    errors[path] = f"{errors[path]}\\n{message}" if path in errors else message


def _check_prop(value: Any, prop: Mapping[str, Any], path: str, errors: dict[str, str]) -> None:
    if value is None:
        if prop.get("type") != "null" and not prop.get("optional"):
            _add(errors, path, MISSING)
        return
    if not _check_type(path, prop.get("type"), value, errors):
        return
    if isinstance(value, list | dict):
        return
    text = _text(value)
    for check in _SCALAR_CHECKS:
        message = check(prop, text)
        if message:
            _add(errors, path, message)
            return


def _check_type(path: str, kind: Any, value: Any, errors: dict[str, str]) -> bool:
    if kind in (None, "any", "string"):
        ok = not isinstance(value, list | dict)
        if not ok:
            _add(errors, path, f"type check ('{kind}') failed - got {_perl_ref(value)}")
        return ok
    if kind in ("array", "object"):
        ok = isinstance(value, list if kind == "array" else dict)
        if not ok:
            _add(errors, path, f"type check ('{kind}') failed")
        return ok
    if isinstance(value, list | dict):
        _add(errors, path, f"type check ('{kind}') failed - got {_perl_ref(value)}")
        return False
    if kind == "boolean" and isinstance(value, bool):
        return True
    text = _text(value)
    valid = {
        "boolean": lambda t: t in ("0", "1"),
        "integer": lambda t: bool(INTEGER.match(t)),
        "number": lambda t: bool(NUMBER.match(t)),
    }.get(str(kind), lambda t: True)
    if not valid(text):
        _add(errors, path, f"type check ('{kind}') failed - got '{text}'")
        return False
    return True


def _perl_ref(value: Any) -> str:
    return "ARRAY" if isinstance(value, list) else "HASH"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _format_check(prop: Mapping[str, Any], text: str) -> str | None:
    fmt = prop.get("format")
    if fmt is None:
        return None
    try:
        if isinstance(fmt, dict):
            check_property_string(fmt, text)
        else:
            check_format(str(fmt), text)
    except ValueError as exc:
        return f"invalid format - {exc}"
    return None


def _pattern_check(prop: Mapping[str, Any], text: str) -> str | None:
    pattern = prop.get("pattern")
    if pattern is not None and not re.fullmatch(f"(?:{pattern})", text):
        return "value does not match the regex pattern"
    return None


def _length_check(prop: Mapping[str, Any], text: str) -> str | None:
    if "maxLength" in prop and len(text) > int(prop["maxLength"]):
        return f"value may only be {perl_number(prop['maxLength'])} characters long"
    if "minLength" in prop and len(text) < int(prop["minLength"]):
        return f"value must be at least {perl_number(prop['minLength'])} characters long"
    return None


def _range_check(prop: Mapping[str, Any], text: str) -> str | None:
    if not NUMBER.match(text):
        return None
    number = float(text)
    if "maximum" in prop and number > float(prop["maximum"]):
        return f"value must have a maximum value of {perl_number(prop['maximum'])}"
    if "minimum" in prop and number < float(prop["minimum"]):
        return f"value must have a minimum value of {perl_number(prop['minimum'])}"
    return None


def _enum_check(prop: Mapping[str, Any], text: str) -> str | None:
    enum = prop.get("enum")
    if enum is not None and text not in [str(e) for e in enum]:
        return f"value '{text}' does not have a value in the enumeration '{', '.join(enum)}'"
    return None


_SCALAR_CHECKS: tuple[Callable[[Mapping[str, Any], str], str | None], ...] = (
    _format_check, _pattern_check, _length_check, _range_check, _enum_check,
)


def perl_number(value: Any) -> str:
    """A schema number as Perl prints it: ``100``, not ``100.0``."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


# --- formats (the registered verifiers the subset's parameters name) ------------------

IPV4 = r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
CONFIGID = re.compile(r"^[a-z][a-z0-9_-]+$", re.I)


def _verifier(regex: str, message: str, flags: int = 0) -> Callable[[str], None]:
    compiled = re.compile(regex, flags)

    def verify(value: str) -> None:
        if not compiled.fullmatch(value):
            raise ValueError(message.format(value=value))

    return verify


def _verify_id(kind: str) -> Callable[[str], None]:
    """``PVE::JSONSchema::parse_id``: storage and similar IDs."""

    def verify(value: str) -> None:
        if len(value) < 2:
            raise ValueError(f"{kind} ID '{value}' cannot be shorter than 2 characters\n")
        if not re.fullmatch(r"[a-z][a-z0-9\-_.]*[a-z0-9]", value, re.I):
            raise ValueError(f"{kind} ID '{value}' contains illegal characters\n")

    return verify


def _verify_cidr(value: str) -> None:
    found = re.fullmatch(rf"(?:{IPV4}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*)/(\d+)", value)
    limit = 32 if found and "." in value.split("/")[0] and ":" not in value else 128
    if not found or not 7 < int(found.group(1)) <= limit:
        raise ValueError("value does not look like a valid CIDR network\n")


def _verify_ip_cidr_alias(value: str) -> None:
    """``IPorCIDRorAlias`` (pve-firewall): an address, a network, or an alias name."""
    if re.fullmatch(rf"{IPV4}(?:/\d+)?|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(?:/\d+)?", value):
        return
    if re.fullmatch(r"(?:(?:dc|guest)/)?[A-Za-z][A-Za-z0-9\-_]+", value):
        return
    raise ValueError("value does not look like a valid IP address or CIDR network\n")


def _verify_prune(value: str) -> None:
    """``prune-backups`` is a property string of keep-* counts."""
    for part in filter(None, (p.strip() for p in value.split(","))):
        key, _, count = part.partition("=")
        if key not in PRUNE_KEYS:
            raise ValueError(f"invalid key in comma-separated list property: {key}\n")
        if not INTEGER.match(count) or (key == "keep-all" and count not in ("0", "1")):
            raise ValueError(f"format error\n{key}: type check failed - got '{count}'\n")


PRUNE_KEYS = {f"keep-{k}" for k in ("all", "last", "hourly", "daily", "weekly", "monthly",
                                     "yearly")}
CONTENT_TYPES = {"images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"}

FORMATS: dict[str, Callable[[str], None]] = {
    "pve-node": _verifier(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?",
                          "value does not look like a valid node name\n"),
    "pve-vmid": _verifier(r"[1-9][0-9]{2,8}", "value does not look like a valid VM ID\n"),
    "pve-storage-id": _verify_id("storage"),
    "pve-configid": _verifier(CONFIGID.pattern[1:-1], "invalid configuration ID '{value}'\n",
                              re.I),
    "pve-poolid": _verifier(r"[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+){0,2}",
                            "invalid pool ID '{value}'\n"),
    "dns-name": _verifier(
        r"(([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)\.)*([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)",
        "value does not look like a valid DNS name\n"),
    "pve-tag": _verifier(r"[a-z0-9_][a-z0-9_\-+.]*", "invalid characters in tag\n", re.I),
    "pve-realm": _verifier(r"[A-Za-z][A-Za-z0-9.\-_]+", "realm '{value}' contains invalid "
                           "characters\n"),
    "urlencoded": _verifier(r"[-%a-zA-Z0-9_.!~*'()]*", "invalid urlencoded string: {value}\n"),
    "pve-storage-content": _verifier("|".join(sorted(CONTENT_TYPES)),
                                     "invalid content type '{value}'\n"),
    "pve-volume-id": _verifier(r"(?:[A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]:)?.+",
                               "unable to parse volume ID '{value}'\n"),
    "CIDR": _verify_cidr,
    "IPorCIDRorAlias": _verify_ip_cidr_alias,
    "prune-backups": _verify_prune,
}


def split_list(text: str) -> list[str]:
    """``PVE::Tools::split_list``: commas, semicolons, whitespace or NULs separate items."""
    return [item for item in re.split(r"[;,\s\0]+", text.strip()) if item]


def check_format(fmt: str, value: str) -> None:
    """Raise ``ValueError`` with PVE's message; unknown formats accept, like a typed string."""
    base, _, kind = fmt.rpartition("-") if fmt.endswith(("-list", "-opt")) else (fmt, "", "")
    verify = FORMATS.get(base)
    if verify is None:
        return
    if kind == "list":
        for item in split_list(value):
            verify(item)
    elif kind != "opt" or value:
        verify(value)


def check_property_string(fmt: Mapping[str, Any], value: str) -> None:
    """Keys and simple values of a property string such as ``net0`` or ``scsi0``."""
    default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
    for part in filter(None, value.split(",")):
        key, sep, raw = part.partition("=")
        if not sep:
            if default_key is None:
                raise ValueError("value without key, but schema does not define a default key\n")
            key, raw = default_key, part
        sub = _property_schema(fmt, key)
        if sub is None:
            raise ValueError(f"invalid key in comma-separated list property: {key}\n")
        errors: dict[str, str] = {}
        simple = {k: v for k, v in sub.items() if k != "format" or isinstance(v, str)}
        _check_prop(raw, simple, key, errors)
        if errors:
            raise ValueError(f"format error\n{key}: {errors[key]}\n")


def _property_schema(fmt: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """A key's schema; ``alias`` and ``keyAlias`` entries point at their target."""
    sub = fmt.get(key)
    if sub is None:
        return None
    target = sub.get("alias")
    return dict(fmt.get(target, sub)) if target else dict(sub)


# --- return checks (used by the acceptance tests against the schema's ``returns``) ----


def check_returns(schema: Mapping[str, Any], value: Any, path: str = "data") -> list[str]:
    """Problems of ``value`` against a ``returns`` schema: type, properties, items, optional."""
    kind = schema.get("type")
    if value is None:
        return [] if kind in (None, "null", "any") else [f"{path}: null, expected {kind}"]
    problem = _returns_type(kind, value)
    if problem:
        return [f"{path}: {problem}"]
    if kind == "array" and schema.get("items"):
        return [p for i, v in enumerate(value)
                for p in check_returns(schema["items"], v, f"{path}[{i}]")]
    if kind == "object":
        return _returns_object(schema, value, path)
    if "enum" in schema and str(value) not in [str(e) for e in schema["enum"]]:
        return [f"{path}: {value!r} not in {schema['enum']}"]
    return []


def _returns_object(schema: Mapping[str, Any], value: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    properties = schema.get("properties") or {}
    for name, prop in properties.items():
        if name in value:
            problems += check_returns(prop, value[name], f"{path}.{name}")
        elif not prop.get("optional"):
            problems.append(f"{path}.{name}: missing")
    if schema.get("additionalProperties") in (0, False):
        problems += [f"{path}.{k}: not in schema" for k in value if k not in properties]
    return problems


def _returns_type(kind: Any, value: Any) -> str | None:
    expected: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool) or v in (0, 1),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    test = expected.get(str(kind))
    if test is None or test(value):
        return None
    return f"{value!r} is not of type {kind}"
