"""Validation of mapping files: `validate_paths` is what `hub mappings validate` calls."""

from __future__ import annotations

import os
from pathlib import Path

from hub.mapping import checks
from hub.mapping.checks import Context, Doc
from hub.mapping.problems import Problem
from hub.mapping.schema import CatalogueFile, DepartmentFile
from hub.mapping.yamlsource import load_yaml

ENV_DIR = "HUB_MAPPINGS_DIR"


def mappings_dir() -> Path:
    """The mappings directory: `$HUB_MAPPINGS_DIR`, else `./mappings`."""
    return Path(os.environ.get(ENV_DIR) or "mappings")


def validate_paths(paths: list[Path] | None = None) -> list[Problem]:
    """Every problem in `paths` (default: every *.yaml of the mappings directory).

    Files of the mappings directory that are not being validated still serve as context,
    so a department file is checked against the catalogue and the other departments.
    """
    problems, _ = collect(mappings_dir(), paths)
    return problems


def collect(directory: Path, paths: list[Path] | None) -> tuple[list[Problem], list[Doc]]:
    """Load, parse and check; returns the problems of target files and all documents."""
    directory_files = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    if paths is None and not directory.is_dir():
        # An empty catalogue would turn every case into "unknown service": say why instead.
        where = "HUB_CONFIG's mappings: or run from the directory that holds mappings/"
        return [
            Problem(str(directory.resolve()), 0, "mappings", f"directory not found (set {where})")
        ], []
    targets = [Path(p) for p in paths] if paths is not None else directory_files
    target_keys = {_same_file(p) for p in targets}
    docs = [_load(p, target=True) for p in targets]
    context = [_load(p, target=False) for p in directory_files if _same_file(p) not in target_keys]
    docs += _without_replaced(context, docs)
    ctx, problems = _context(docs)
    for doc in docs:
        if isinstance(doc.model, CatalogueFile):
            doc.problems.extend(checks.catalogue_checks(doc))
        elif isinstance(doc.model, DepartmentFile):
            doc.problems.extend(checks.department_checks(doc, ctx))
    problems += checks.duplicate_route_checks(docs)
    problems += checks.unrouted_service_checks(docs)
    problems += [p for doc in docs if doc.target for p in doc.problems]
    return sorted(set(problems)), docs


def _same_file(path: Path) -> Path:
    return path.resolve()


def _load(path: Path, *, target: bool) -> Doc:
    source = load_yaml(path)
    doc = Doc(source=source, kind=checks.kind_of(source), target=target)
    checks.parse(doc)
    return doc


def _without_replaced(context: list[Doc], targets: list[Doc]) -> list[Doc]:
    """A target file stands in for the context file of the same department (or catalogue)."""
    names = {_department_name(d) for d in targets} - {None}
    has_catalogue = any(d.kind == "catalogue" for d in targets)
    return [
        d
        for d in context
        if _department_name(d) not in names and not (has_catalogue and d.kind == "catalogue")
    ]


def _department_name(doc: Doc) -> str | None:
    data = doc.source.data
    if doc.kind == "department" and isinstance(data, dict):
        name = data.get("department")
        return name if isinstance(name, str) else None
    return None


def _context(docs: list[Doc]) -> tuple[Context, list[Problem]]:
    """Catalogue and departments by name; a department defined twice is a problem."""
    services: dict[str, tuple[Doc, int]] = {}
    departments: dict[str, Doc] = {}
    problems: list[Problem] = []
    for doc in docs:
        if isinstance(doc.model, CatalogueFile):
            for i, service in enumerate(doc.model.services):
                services.setdefault(service.service_code, (doc, i))
        name = _department_name(doc)
        if name is None:
            continue
        if name in departments and doc.target:
            first = departments[name].where(("department",))
            problems.append(
                doc.at(("department",), f"department {name!r} is already defined in {first}")
            )
            continue
        departments.setdefault(name, doc)
    catalogue_ok = all(d.model is not None for d in docs if d.kind == "catalogue")
    return Context(services, departments, catalogue_ok), problems
