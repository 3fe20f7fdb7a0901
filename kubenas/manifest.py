"""Reading an ArchitectureSearch manifest: bounded, strict YAML, then the spec models.

A manifest is untrusted input. Before anything is built from it, it must be
small (MAX_BYTES), UTF-8 text, YAML without duplicate keys, and expand (aliases
included) to a bounded tree (MAX_NODES nodes, MAX_DEPTH levels). Every refusal
is one InvalidSpec naming the file and the field; values are shortened before
they are rendered, so an error message is never larger than the input's bounds.

A file may hold other documents (a Secret, say, as for `kubectl apply`); exactly
one of them must be an ArchitectureSearch: `kubenas run` runs one search per file.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import ValidationError

from kubenas.errors import InvalidSpec
from kubenas.files import read_bounded
from kubenas.spec import API_VERSION, KIND, ArchitectureSearch

MAX_BYTES = 1 << 20  # 1 MiB: the largest manifest the API server stores is about that (etcd's limit)
MAX_NODES = 100_000  # YAML nodes after alias expansion (an alias bomb expands to billions)
MAX_DEPTH = 64  # nesting levels; the deepest real manifest (affinity) has about 12


def _short(value: Any) -> str:
    """A bounded repr: never renders more than a few dozen elements, however large the value."""
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 3, 40, 40, 4, 4, 4, 4
    text = r.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per field: `spec.budget.maxTrials: Input should be ... (got 0)`."""
    messages: dict[str, list[str]] = {}
    inputs: dict[str, str] = {}
    for err in exc.errors():
        # Union members and validator wrappers appear in `loc` (`int`, `function-after[...]`): not fields.
        path = ".".join(str(p) for p in err["loc"] if not any(c in str(p) for c in "[(") and
                        str(p) not in ("bool", "int", "float", "str", "list", "dict")) or "<root>"
        if err["type"] != "missing":
            inputs.setdefault(path, f" (got {_short(err.get('input'))})")
        entries = messages.setdefault(path, [])
        if err["msg"] not in entries:
            entries.append(err["msg"])
    lines = []
    for path, entries in messages.items():
        # A union's members each say "Input should be ...": say it once.
        text = entries[0] + "".join(" or " + m.removeprefix("Input should be ") for m in entries[1:5])
        lines.append(f"{path}: {text}{inputs.get(path, '')}")
    return lines


def parse_manifest(data: Any, source: str = "manifest") -> ArchitectureSearch:
    """An ArchitectureSearch from already-parsed data (the operator's and the tests' entry)."""
    try:
        return ArchitectureSearch.model_validate(data)
    except ValidationError as exc:
        lines = describe_errors(exc)
        if len(lines) == 1:
            raise InvalidSpec(f"{source}: {lines[0]}") from None
        raise InvalidSpec(f"{source}: {len(lines)} fields are invalid:\n  " + "\n  ".join(lines)) from None
    except RecursionError:
        raise InvalidSpec(f"{source}: nested too deeply to validate") from None


def load_manifest(path: str | Path) -> ArchitectureSearch:
    """The one ArchitectureSearch in a YAML (or JSON) file, validated."""
    path = Path(path)
    source = str(path)
    documents = read_yaml_documents(path)
    searches = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if not searches and len(documents) == 1 and isinstance(documents[0], dict):
        searches = documents  # let the models say what is wrong with kind or apiVersion
    if not searches:
        raise InvalidSpec(f"{source}: no document with kind: {KIND} (apiVersion {API_VERSION})")
    if len(searches) > 1:
        names = ", ".join(_short((d.get("metadata") or {}).get("name")) if isinstance(d.get("metadata"), dict)
                          else "?" for d in searches)
        raise InvalidSpec(f"{source}: holds {len(searches)} {KIND} documents ({names}); one search per file: "
                          "put each in a file of its own and run each")
    manifest = parse_manifest(searches[0], source)
    _check_semantics(manifest, source)
    return manifest


def read_yaml_documents(path: Path) -> list[Any]:
    """The non-empty documents of a bounded, UTF-8, duplicate-free YAML file."""
    source = str(path)
    try:
        if path.is_dir():
            raise InvalidSpec(f"{source}: is a directory; expected a manifest file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise InvalidSpec(f"{source}: is {size / (1 << 20):.1f} MiB; a manifest may be at most "
                              f"{MAX_BYTES >> 20} MiB")
    except OSError as exc:
        raise InvalidSpec(f"{source}: cannot read it: {exc.strerror or exc}") from None
    data = read_bounded(path, MAX_BYTES, source, hint=f"a manifest may be at most {MAX_BYTES >> 20} MiB",
                        error=InvalidSpec)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidSpec(f"{source}: is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "expected a YAML or JSON manifest") from None
    return list(_documents(text, source))


def _documents(text: str, source: str) -> Iterator[Any]:
    loader = None
    try:
        loader = _StrictLoader(text)
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_tree(node, source)
            document = loader.construct_document(node)
            if document is not None:
                yield document
    except InvalidSpec:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InvalidSpec(f"{source}: not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.reader.ReaderError as exc:
        raise InvalidSpec(f"{source}: not valid YAML: character #x{exc.character:04x} at offset {exc.position} "
                          "is not allowed in YAML text") from None
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{source}: not valid YAML: {str(exc)[:160]}") from None
    except RecursionError:
        raise InvalidSpec(f"{source}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer of 5,000 digits
        raise InvalidSpec(f"{source}: a value cannot be read: {str(exc)[:160]}") from None
    finally:
        if loader is not None:
            loader.dispose()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML 1.2 forbids them; PyYAML keeps the last)."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_tree(root: yaml.Node, source: str) -> None:
    """Bound the expanded size and depth, refuse recursive aliases and duplicate keys,
    all on the composed node graph: aliases are shared nodes there, not yet copies."""
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, closing = stack.pop()
        key = id(node)
        if closing:
            open_nodes.discard(key)
            expanded[key] = 1 + sum(expanded[id(c)] for c in _children(node))
            if expanded[key] > MAX_NODES:
                raise InvalidSpec(f"{source}: expands to more than {MAX_NODES:,} values (line "
                                  f"{node.start_mark.line + 1}); are aliases (*name) repeating a large anchor?")
            continue
        if key in expanded:
            continue
        if key in open_nodes:
            raise InvalidSpec(f"{source}: a recursive alias at line {node.start_mark.line + 1}")
        if depth > MAX_DEPTH:
            raise InvalidSpec(f"{source}: nested more than {MAX_DEPTH} levels deep (line {node.start_mark.line + 1})")
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node, source)
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))


def _check_duplicate_keys(node: yaml.MappingNode, source: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise InvalidSpec(f"{source}: duplicate key {_short(key_node.value)} at line {line} "
                              f"(first at line {seen[key]}); remove one of them")
        seen[key] = line


def _check_semantics(manifest: ArchitectureSearch, source: str) -> None:
    """Rules the schema cannot express: the search space must build."""
    from kubenas.spaces import build_space

    try:
        build_space(manifest.spec.search_space)
    except (InvalidSpec, ValueError) as exc:
        raise InvalidSpec(f"{source}: spec.{exc}") from None
