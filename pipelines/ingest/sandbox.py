"""Mapping expressions run in a sandbox: they compute values from a file's columns, nothing else.

A mapping's `columns:`, `where:` and `aggregate:` expressions are DuckDB SQL written by the
people who configure a source. They are checked twice:

1. when the mapping is loaded (`expression_problem`): the text is parsed by DuckDB as the
   one expression of one SELECT, and only these forms are allowed - column references,
   constants, operators, CASE, casts and calls of DuckDB's scalar and aggregate functions
   (plus needseg's `parse_number`, `parse_date`). No subquery, no table function
   (`read_text`, `read_csv`, ...), no second statement (`1); copy ... to '/x'; select (1`),
   no functions that read settings (`current_setting`). A refused expression is a
   configuration error naming the mapping, table and column, before any file is read. A
   call of a function DuckDB does not know passes this check (a header such as
   "Price (EUR)" parses as one) and is judged on the file: the column, or a binding error.
2. when a file is parsed (`connect`): every query runs on an in-memory DuckDB with external
   access disabled (no file, no network, no extension loading) and its configuration locked,
   so even an expression that slipped past step 1 cannot read or write a file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pipelines.warehouse import sandboxed

# Functions that are scalar but tell more than a file's columns.
DENIED_FUNCTIONS = frozenset({"current_setting", "current_query", "current_query_id", "getenv", "getvariable"})
# needseg's macros (pipelines.ingest.parse._macros), callable from every mapping.
NEEDSEG_FUNCTIONS = frozenset({"parse_number", "parse_date"})
# Expression node classes an expression may consist of (DuckDB's parsed expression classes).
ALLOWED_CLASSES = frozenset(
    {
        "COLUMN_REF",
        "CONSTANT",
        "FUNCTION",
        "OPERATOR",
        "COMPARISON",
        "CONJUNCTION",
        "CASE",
        "CAST",
        "BETWEEN",
        "WINDOW",
        "STAR",  # count(*)
        "COLLATE",
        "TYPE",  # the type of a cast
        "LAMBDA",  # list_transform(x, v -> v * 2)
    }
)


@lru_cache(maxsize=1)
def _refused_functions() -> frozenset[str]:
    """Table functions, pragmas and the denied scalar ones (a name that is also a scalar
    function, e.g. `range`, is allowed as the scalar)."""
    with sandboxed() as con:
        rows = con.execute(
            "select lower(function_name), bool_or(function_type in ('scalar', 'aggregate', 'macro', 'window')) "
            "from duckdb_functions() group by 1"
        ).fetchall()
    return frozenset(name for name, scalar in rows if not scalar) | DENIED_FUNCTIONS - NEEDSEG_FUNCTIONS


_SYNTAX = "not a valid SQL expression"


@lru_cache(maxsize=4096)
def expression_problem(expression: str) -> str | None:
    """Why `expression` is not allowed in a mapping (None: it is)."""
    with sandboxed() as con:
        parsed = json.loads(con.execute("select json_serialize_sql(?)", [f"select ({expression}) as needseg_value"]).fetchone()[0])
    if parsed.get("error"):
        message = str(parsed.get("error_message", "")).splitlines()[0]
        if "Only SELECT" in message:
            return "not one expression: it holds a statement other than a SELECT (e.g. COPY)"
        return f"{_SYNTAX} ({message})"
    statements = parsed.get("statements") or []
    if len(statements) != 1:
        return "not one expression: it holds several statements"
    node = statements[0]["node"]
    extra = [key for key in ("from_table", "where_clause", "group_expressions", "having", "qualify") if _present(node.get(key))]
    if len(node.get("select_list", [])) != 1 or extra or node.get("type") != "SELECT_NODE":
        return "not one expression: it closes the expression and adds query clauses"
    return _node_problem(node["select_list"][0])


def refusal(expression: str) -> str | None:
    """Why a mapping may not hold `expression` (None: it may). Text that does not parse as
    SQL at all is not refused here: it may be a column name ("Kund sedan"), which the
    parser looks up in the file; run as SQL it never is (see `expression_problem`)."""
    problem = expression_problem(expression)
    return None if problem and problem.startswith(_SYNTAX) else problem


def _present(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("type") not in (None, "EMPTY")
    return bool(value)


def _node_problem(node: Any) -> str | None:
    """The first disallowed part of a parsed expression tree."""
    if isinstance(node, list):
        for child in node:
            problem = _node_problem(child)
            if problem:
                return problem
        return None
    if not isinstance(node, dict):
        return None
    kind = node.get("class")
    if kind is not None:
        if kind == "SUBQUERY":
            return "a subquery (SELECT inside the expression) is not allowed: an expression computes a value from the row's columns"
        if kind not in ALLOWED_CLASSES:
            return f"a {kind.lower().replace('_', ' ')} is not allowed in a mapping expression"
        if kind in ("FUNCTION", "WINDOW"):
            name = str(node.get("function_name", "")).lower()
            if node.get("schema") or node.get("catalog"):
                return f"function {node.get('schema')}.{name} is not allowed: call functions without a schema"
            if name in _refused_functions():
                return (
                    f"function {name}() is not allowed: only DuckDB's scalar and aggregate functions and parse_number/parse_date "
                    "may be used (no table functions, no file or setting access)"
                )
    for key, child in node.items():
        if key in ("query_location", "query_location_length", "alias"):
            continue
        problem = _node_problem(child)
        if problem:
            return problem
    return None
