"""YAML files validated by pydantic, with errors that name file, field and line.

An operator who mistypes ``sunpend`` must be told where, not handed a
traceback. PyYAML's node tree keeps each value's position; pydantic's error
locations are paths into the same tree, so one walk maps one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.secrets.credentials import VaultText


class PolicyError(Exception):
    """A policy, inventory or event file that cannot be used as written."""

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a file, said where a person editing it finds it."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


M = TypeVar("M", bound=BaseModel)


class Located(ValueError):
    """A whole-file check's error that knows where in the file it is (a path of keys).

    A validator of the whole model sees every host at once, but pydantic
    places its errors at the document; this carries the path of the value
    at fault so the operator is told its line.
    """

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class Loader(yaml.SafeLoader):
    """The safe loader, plus Ansible's ``!vault`` tag for encrypted secrets in inventories.

    A key written twice in one mapping is refused: YAML would keep the last
    silently, so ``suspend: 5d`` further down would quietly win over the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicates(node)
        return super().construct_mapping(node, deep)


def _refuse_duplicates(node: yaml.MappingNode) -> None:
    """Written keys only: a merge (``<<``) may be overridden, that is what it is for."""
    first: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if key.value in first:
            raise yaml.constructor.ConstructorError(
                problem=f"key {key.value!r} is written twice (first on line {first[key.value]})",
                problem_mark=key.start_mark,
            )
        first[key.value] = key.start_mark.line + 1


def _vault(loader: yaml.SafeLoader, node: yaml.Node) -> VaultText:
    return VaultText(loader.construct_scalar(node))  # type: ignore[arg-type]


Loader.add_constructor("!vault", _vault)


def load_yaml_model(path: Path, model: type[M]) -> M:
    text = read_text(path)
    try:
        root = yaml.compose(text, Loader=Loader)
        data = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = Problem(str(path), line, "(syntax)", str(getattr(exc, "problem", exc)))
        raise PolicyError(str(problem), [problem]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(path, root, error) for error in exc.errors()]
        raise PolicyError("\n".join(str(p) for p in problems), problems) from None


def read_text(path: Path) -> str:
    """A file's UTF-8 text, or a PolicyError naming the file (and line) that is not."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None


def _problem(path: Path, root: yaml.Node | None, error: Any) -> Problem:
    loc = [part for part in error["loc"] if not _is_validator_tag(part)]
    message = error["msg"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Located):
        loc, message = [*loc, *cause.loc], str(cause)
    field = ".".join(str(part) for part in loc) or "(document)"
    if error["type"] == "extra_forbidden":
        message = "unknown field (misspelled?)"
    return Problem(str(path), _line_of(root, loc), field, message)


def _is_validator_tag(part: object) -> bool:
    """pydantic adds tags like 'function-after[...]' to locations; they are not in the file."""
    return isinstance(part, str) and "[" in part and part.endswith("]")


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int:
    """The line of the deepest part of ``loc`` present in the file (a key's own line)."""
    line = node.start_mark.line + 1 if node is not None else 0
    for part in loc:
        found = _child(node, part)
        if found is None:
            break
        mark, node = found
        line = mark.line + 1
    return line


def _child(node: yaml.Node | None, part: Any) -> tuple[Any, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key.start_mark, value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child.start_mark, child
    return None
