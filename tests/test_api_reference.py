"""The error-code table (center.errors.ERROR_CODES) and docs/api.md against the code.

The scan reads center/ and paywire/ as source (AST), so a code raised anywhere without a table
entry, a literal status that differs from the table's, a table entry nothing raises, or a stale
docs/api.md fails here rather than in a client.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from center.errors import ERROR_CODES, RETRY_CODES, STATUS_FOR_CODE, ApiError, status_for

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("center", "paywire")
RAISERS = frozenset({"ApiError", "Refusal", "WireError"})
ERROR_MODULE = ROOT / "center" / "errors.py"
DOCS = ROOT / "docs" / "api.md"


@dataclass(frozen=True)
class Raised:
    where: str
    code: str
    status: int | None  # a literal status passed at the raise site
    how: str


def _sources() -> list[tuple[str, ast.Module]]:
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            found.append((str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))))
    return found


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _error_classes(sources) -> set[str]:
    """ApiError, Refusal, WireError and every class deriving from one of them (by name)."""
    classes = set(RAISERS)
    grew = True
    while grew:
        grew = False
        for _, tree in sources:
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.ClassDef)
                    and node.name not in classes
                    and any(isinstance(base, ast.Name) and base.id in classes for base in node.bases)
                ):
                    classes.add(node.name)
                    grew = True
    return classes


def _is_super_init(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "__init__"
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "super"
    )


def _status_arg(call: ast.Call) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "status":
            return keyword.value
    return call.args[2] if len(call.args) >= 3 else None


def _code_arg(call: ast.Call) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "code":
            return keyword.value
    return call.args[0] if call.args else None


def _module_dicts(tree: ast.Module) -> dict[str, ast.Dict]:
    dicts = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    dicts[target.id] = node.value
    return dicts


def _codes_from_lookup(value: ast.expr, position: int | None, dicts: dict[str, ast.Dict]) -> list[str] | None:
    """Codes a `D.get(key, default)` or `D[key]` can give, D a dict literal or a module-level one."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "get":
        table_ref, defaults = value.func.value, value.args[1:]
    elif isinstance(value, ast.Subscript):
        table_ref, defaults = value.value, []
    else:
        return None
    table = dicts.get(table_ref.id) if isinstance(table_ref, ast.Name) else table_ref
    if not isinstance(table, ast.Dict):
        return None
    codes = []
    for item in [*table.values, *defaults]:
        if isinstance(item, ast.Subscript) and ast.dump(item.value) == ast.dump(table_ref):
            continue  # a default that is another entry of the same table
        if position is not None and isinstance(item, ast.Tuple):
            item = item.elts[position]
        if not (isinstance(item, ast.Constant) and isinstance(item.value, str)):
            return None
        codes.append(item.value)
    return codes


def _resolve_name(name: str, function: ast.AST, dicts: dict[str, ast.Dict]) -> list[str] | None:
    """The codes a local variable holding an error code can take, from its assignments."""
    codes = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id == name:
                found = _codes_from_lookup(node.value, None, dicts)
            elif isinstance(target, ast.Tuple) and name in (names := [ast.unparse(e) for e in target.elts]):
                position = names.index(name)
                found = _codes_from_lookup(node.value, position, dicts)
            else:
                continue
            if found is None:
                return None
            codes.extend(found)
    return codes or None


class _Scanner(ast.NodeVisitor):
    def __init__(self, where: str, tree: ast.Module, error_classes: set[str]):
        self.where, self.error_classes = where, error_classes
        self.dicts = _module_dicts(tree)
        self.functions: list[ast.AST] = []
        self.classes: list[ast.ClassDef] = []
        self.raised: list[Raised] = []
        self.problems: list[str] = []

    def _in_error_class(self) -> bool:
        return bool(self.classes) and any(
            isinstance(base, ast.Name) and base.id in self.error_classes for base in self.classes[-1].bases
        )

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node)
        self.generic_visit(node)
        self.classes.pop()

    def visit_FunctionDef(self, node) -> None:
        self.functions.append(node)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if name in RAISERS or (_is_super_init(node) and self._in_error_class()):
            self._constructor(node, name if name in RAISERS else "super().__init__")
        elif name == "note_error" and node.args and isinstance(node.args[0], ast.Constant):
            self._add(node, node.args[0].value, None, "note_error")
        elif name == "JSONResponse":
            self._json_response(node)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        # A hand-written error body: {"error": {"code": "...", ...}}
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Dict):
                for inner_key, inner_value in zip(value.keys, value.values, strict=True):
                    if (
                        isinstance(inner_key, ast.Constant)
                        and inner_key.value == "code"
                        and isinstance(inner_value, ast.Constant)
                    ):
                        self._add(node, inner_value.value, None, "error body")
        self.generic_visit(node)

    def _add(self, node: ast.AST, code: str, status: int | None, how: str) -> None:
        self.raised.append(Raised(f"{self.where}:{node.lineno}", code, status, how))

    def _constructor(self, node: ast.Call, how: str) -> None:
        code, status = _code_arg(node), None if how == "WireError" else _status_arg(node)
        if isinstance(code, ast.Constant):
            if status is not None and not isinstance(status, ast.Constant):
                self.problems.append(
                    f"{self.where}:{node.lineno}: {code.value} with a computed status "
                    f"{ast.unparse(status)}: pass none (the table's) or the table's literal"
                )
            self._add(node, code.value, status.value if isinstance(status, ast.Constant) else None, how)
        elif isinstance(code, ast.Subscript) or (isinstance(code, ast.Attribute) and code.attr == "code"):
            pass  # a recorded answer replayed as sent, or an error passed on: its code was raised before
        elif isinstance(code, ast.Name) and self.functions:
            codes = _resolve_name(code.id, self.functions[-1], self.dicts)
            if codes is None:
                self.problems.append(f"{self.where}:{node.lineno}: cannot tell which codes {code.id!r} holds")
            for one in codes or ():
                self._add(node, one, None, f"{how} via {code.id}")
        else:
            self.problems.append(
                f"{self.where}:{node.lineno}: an error code this test cannot read: "
                f"{ast.unparse(code) if code is not None else 'none'}"
            )

    def _json_response(self, node: ast.Call) -> None:
        status = next((k.value for k in node.keywords if k.arg == "status_code"), None)
        if not isinstance(status, ast.Constant) or not node.args:
            return
        for inner in ast.walk(node.args[0]):
            if isinstance(inner, ast.Call) and _call_name(inner) in RAISERS:
                code = _code_arg(inner)
                if isinstance(code, ast.Constant):
                    self._add(node, code.value, status.value, "JSONResponse")


@pytest.fixture(scope="module")
def scan() -> tuple[list[Raised], list[str]]:
    sources = _sources()
    error_classes = _error_classes(sources)
    raised, problems = [], []
    for where, tree in sources:
        if where == str(ERROR_MODULE.relative_to(ROOT)):
            continue
        scanner = _Scanner(where, tree, error_classes)
        scanner.visit(tree)
        raised += scanner.raised
        problems += scanner.problems
    return raised, problems


def test_the_scan_finds_the_known_raise_sites(scan):
    # The scan itself: if a refactor hid these from it, the checks below would pass on nothing.
    codes = {item.code for item in scan[0]}
    for expected in (
        "wrong_message_type",
        "wrong_domain",
        "unknown_message_type",
        "payload_too_large",
        "too_many_challenges",
        "key_rotated",
        "method_not_allowed",
        "http_error",
        "rate_limited",
        "not_found",
    ):
        assert expected in codes, expected
    assert len(scan[0]) > 150


def test_every_error_code_raised_is_in_the_table(scan):
    raised, problems = scan
    missing = sorted(
        {f"{item.code} ({item.where}, {item.how})" for item in raised if item.code not in ERROR_CODES}
    )
    assert not missing, "codes raised but not in center.errors.ERROR_CODES:\n" + "\n".join(missing)
    assert not problems, "\n".join(problems)


def test_every_literal_status_is_the_tables(scan):
    wrong = [
        f"{item.where}: {item.code} passes {item.status}, the table says {ERROR_CODES[item.code].status}"
        for item in scan[0]
        if item.status is not None
        and item.code in ERROR_CODES
        and item.status != ERROR_CODES[item.code].status
    ]
    assert not wrong, "\n".join(wrong)


def test_every_table_entry_is_used():
    # A code nothing answers with any more stays documented as a contract it is not: drop it.
    paths = [path for top in SCANNED for path in (ROOT / top).rglob("*.py") if path != ERROR_MODULE]
    text = "\n".join(path.read_text(encoding="utf-8") for path in paths)
    unused = [code for code in ERROR_CODES if f'"{code}"' not in text]
    assert not unused, unused
    assert set(ERROR_CODES) >= RETRY_CODES


def test_one_status_per_code_is_what_an_error_answers():
    for code, entry in ERROR_CODES.items():
        assert entry.meaning and len(entry.meaning) <= 90, code
        if entry.status is not None:
            assert ApiError(code, "x").status == entry.status == STATUS_FOR_CODE[code] == status_for(code)
    assert [code for code, entry in ERROR_CODES.items() if entry.status is None] == ["http_error"]
    assert status_for("a_code_not_listed") == 400


def test_unknown_key_is_401_and_a_missing_kid_is_404():
    # Two meanings, two codes: a request signed by a key not enrolled here (authentication) and an
    # operator naming a kid that does not exist (lookup).
    assert (STATUS_FOR_CODE["unknown_key"], STATUS_FOR_CODE["key_not_found"]) == (401, 404)


def test_every_endpoint_says_what_it_is():
    from center.api.reference import FALLBACK_DESCRIPTIONS, endpoints

    found = endpoints()
    assert {"/v1/payments", "/v1/enroll", "/console/api/me"} <= {endpoint.path for endpoint in found}
    unexplained = [f"{e.method} {e.path} ({e.name})" for e in found if e.description == e.name]
    assert not unexplained, "give these routes a summary or docstring (or a FALLBACK_DESCRIPTIONS entry)"
    stale = [
        name
        for name in FALLBACK_DESCRIPTIONS
        if not any(e.name == name and not e.own_description for e in found)
    ]
    assert not stale, f"drop these from center.api.reference.FALLBACK_DESCRIPTIONS: {stale}"


def test_docs_api_md_is_the_generators_output():
    from center.api.reference import render

    expected = render()
    assert DOCS.read_text(encoding="utf-8") == expected, (
        "docs/api.md is stale: run `python -m center.api.reference > docs/api.md`"
    )
