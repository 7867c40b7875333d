"""YAML loading that remembers where every key and value came from.

PyYAML's composer gives nodes with start marks; we build plain Python data from them and a
side table of line numbers keyed by the data path, so any later check (pydantic or
cross-file) can point at `FILE:LINE`. Duplicate keys, which PyYAML accepts silently, are
reported here. Mapping keys are always kept as their source text: a department status
`NO` or code `01` must not turn into `False` or `1` (YAML 1.1 resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hub.mapping.problems import Problem

PathKey = tuple[str | int, ...]
_MERGE = "tag:yaml.org,2002:merge"


def format_path(path: PathKey) -> str:
    """('routes', 2, 'service_code') -> 'routes[2].service_code'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(file)"


@dataclass
class LineMap:
    """Line numbers (1-based) of keys and values, by data path."""

    keys: dict[PathKey, int] = field(default_factory=dict)
    values: dict[PathKey, int] = field(default_factory=dict)

    def key_line(self, path: PathKey) -> int:
        """Line of the key naming `path`, or of the closest enclosing item."""
        if path in self.keys:
            return self.keys[path]
        return self.value_line(path)

    def value_line(self, path: PathKey) -> int:
        """Line of the value at `path`, falling back to its nearest ancestor."""
        for end in range(len(path), -1, -1):
            line = self.values.get(path[:end])
            if line is not None:
                return line
        return 1


@dataclass
class YamlDocument:
    path: Path
    data: Any
    lines: LineMap
    problems: list[Problem]


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, file: Path) -> None:
        self.loader = loader
        self.file = file
        self.lines = LineMap()
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.lines.values[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges = [value for key, value in node.value if key.tag == _MERGE]
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(key_node, path, "mapping keys must be plain scalars")
                continue
            key = str(key_node.value)
            child = (*path, key)
            if key in out:
                first = self.lines.keys[child]
                self._problem(key_node, child, f"duplicate key (first defined on line {first})")
                continue
            self.lines.keys[child] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, child)
        for merge in merges:
            self._merge(merge, path, out)
        return out

    def _merge(self, merge: yaml.Node, path: PathKey, out: dict[str, Any]) -> None:
        """`<<: *anchor` fills keys not given explicitly; lines point at the anchor."""
        sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
        # explicit keys win, so must their line numbers
        kept_keys, kept_values = dict(self.lines.keys), dict(self.lines.values)
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self._problem(source, path, "`<<` must merge a mapping (an &anchor)")
                continue
            for key, value in self._mapping(source, path).items():
                out.setdefault(key, value)
        self.lines.keys.update(kept_keys)
        self.lines.values.update(kept_values)

    def _problem(self, node: yaml.Node, path: PathKey, message: str) -> None:
        line = node.start_mark.line + 1
        self.problems.append(Problem(str(self.file), line, format_path(path), message))


def load_yaml(file: Path) -> YamlDocument:
    """Parse one file; syntax errors and duplicate keys come back as problems."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return YamlDocument(file, None, LineMap(), [Problem(str(file), 1, "(file)", str(exc))])
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            problem = Problem(str(file), 1, "(file)", "file is empty")
            return YamlDocument(file, None, LineMap(), [problem])
        builder = _Builder(loader, file)
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        return YamlDocument(file, None, LineMap(), [_syntax_problem(file, exc)])
    finally:
        loader.dispose()
    return YamlDocument(file, data, builder.lines, builder.problems)


def _syntax_problem(file: Path, exc: yaml.MarkedYAMLError) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    context = exc.context or ""
    if context and exc.context_mark and exc.context_mark.line + 1 != line:
        context += f" started on line {exc.context_mark.line + 1}"
    message = ": ".join(part for part in (context, exc.problem) if part)
    return Problem(str(file), line, "(yaml)", f"syntax error: {message}")
