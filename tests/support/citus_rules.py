"""The Citus design rules of docs/scaling.md, checked without Citus: one check reads the
migrated schema's catalog against the declared placement of every table
(delivery_service.store.distribution), the other parses every named query (pglast)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pglast
import psycopg
from pglast import ast, enums

from delivery_service.store import distribution
from delivery_service.store.distribution import Distributed, Local, Reference

# --- the catalog ----------------------------------------------------------------------

_KEYS = """
SELECT c.relname, k.conname, k.contype,
       array(SELECT a.attname FROM unnest(k.conkey) AS n
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = n) AS columns,
       f.relname AS referenced,
       array(SELECT a.attname FROM unnest(k.confkey) AS n
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = n) AS ref_columns
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = 'public'
LEFT JOIN pg_class f ON f.oid = k.confrelid
WHERE k.contype IN ('p', 'u', 'f', 'x')
ORDER BY 1, 2
"""
_TABLES = """
SELECT c.relname FROM pg_class c
JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = 'public'
WHERE c.relkind IN ('r', 'p') ORDER BY 1
"""
_UNIQUE_INDEXES = """
SELECT c.relname, i.relname,
       array(SELECT a.attname FROM unnest(x.indkey) AS n
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = n) AS columns
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class c ON c.oid = x.indrelid
JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = 'public'
WHERE x.indisunique AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid)
"""
_IDENTITIES = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = 'public'
WHERE a.attidentity <> '' AND c.relkind = 'r'
"""


def catalog_problems(
    conninfo: str, tables: dict[str, distribution.Placement] = distribution.TABLES
) -> list[str]:
    """What in the schema a Citus cluster would refuse, given each table's placement."""
    problems: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        present = [r[0] for r in conn.execute(_TABLES)]
        keys = conn.execute(_KEYS).fetchall()
        unique_indexes = conn.execute(_UNIQUE_INDEXES).fetchall()
        identities = conn.execute(_IDENTITIES).fetchall()
    problems += [f"{t}: no declared placement" for t in present if t not in tables]
    problems += [f"{t}: declared but not in the schema" for t in tables if t not in present]

    def column_of(table: str) -> str | None:
        where = tables.get(table)
        return where.column if isinstance(where, Distributed) else None

    def group(table: str) -> str | None:
        where = tables.get(table)
        if not isinstance(where, Distributed):
            return None
        return where.colocate_with or table

    unique = [(t, name, cols) for t, name, kind, cols, _, _ in keys if kind in "pux"]
    for table, name, columns in unique + [tuple(r) for r in unique_indexes]:
        column = column_of(table)
        if column is not None and column not in columns:
            problems.append(
                f"{table}.{name}: a unique key without the distribution column {column}"
            )
    for table, name, kind, columns, referenced, ref_columns in keys:
        if kind != "f":
            continue
        source, target = tables.get(table), tables.get(referenced)
        if isinstance(target, Reference) or (isinstance(source, Local) and target is None):
            continue
        if isinstance(source, Reference | Local):
            problems.append(f"{table}.{name}: a {type(source).__name__.lower()} table "
                            f"references the distributed table {referenced}")  # fmt: skip
            continue
        if isinstance(target, Local):
            problems.append(f"{table}.{name}: references the local table {referenced}")
            continue
        pairs = dict(zip(columns, ref_columns, strict=True))
        if group(table) != group(referenced) or pairs.get(column_of(table)) != column_of(
            referenced
        ):
            problems.append(
                f"{table}.{name}: references {referenced} other than through colocated "
                "distribution columns"
            )
    for table, column, kind in identities:
        if isinstance(tables.get(table), Distributed) and kind != "bigint":
            problems.append(f"{table}.{column}: an identity column must be bigint, not {kind}")
    return problems


# --- the queries ----------------------------------------------------------------------

# Functions whose value changes within a transaction or a statement: Citus evaluates
# them on the coordinator only where they stand alone.
NOW_LIKE = {
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "random",
    "gen_random_uuid",
    "nextval",
}


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _children(item)
    elif isinstance(node, ast.Node):
        for name in getattr(node, "__slots__", ()):
            value = getattr(node, name, None)
            if isinstance(value, ast.Node):
                yield value
            elif isinstance(value, tuple | list):
                yield from (v for v in value if isinstance(v, ast.Node))


def _walk(node: Any) -> Iterator[Any]:
    yield node
    for child in _children(node):
        yield from _walk(child)


def _is_now_like(node: Any) -> bool:
    if isinstance(node, ast.SQLValueFunction):
        return True
    if isinstance(node, ast.FuncCall):
        name: tuple[Any, ...] = node.funcname or ()
        return bool(name) and name[-1].sval in NOW_LIKE
    return False


def _contains(node: Any, predicate: Any) -> bool:
    return any(predicate(n) for n in _walk(node))


def _conjuncts(expr: Any) -> Iterator[Any]:
    if isinstance(expr, ast.BoolExpr) and expr.boolop == enums.BoolExprType.AND_EXPR:
        for arg in expr.args or ():
            yield from _conjuncts(arg)
    elif expr is not None:
        yield expr


def _strip_cast(node: Any) -> Any:
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return node


def _column(node: Any) -> tuple[str | None, str] | None:
    node = _strip_cast(node)
    fields: tuple[Any, ...] = getattr(node, "fields", None) or ()
    if (
        isinstance(node, ast.ColumnRef)
        and fields
        and all(isinstance(f, ast.String) for f in fields)
    ):
        names = [f.sval for f in fields]
        return (names[0] if len(names) == 2 else None), names[-1]
    return None


def _is_param(node: Any) -> bool:
    return isinstance(_strip_cast(node), ast.ParamRef)


def _relations(from_items: Any) -> Iterator[tuple[str, str]]:
    """(alias, table) of the tables named at this level of a query (not in subqueries)."""
    for item in from_items or ():
        if isinstance(item, ast.RangeVar):
            name = str(item.relname)
            yield (str(item.alias.aliasname) if item.alias else name), name
        elif isinstance(item, ast.JoinExpr):
            yield from _relations((item.larg, item.rarg))


def _join_quals(from_items: Any) -> Iterator[Any]:
    for item in from_items or ():
        if isinstance(item, ast.JoinExpr):
            yield item.quals
            yield from _join_quals((item.larg, item.rarg))


def _unpinned(relations: list[tuple[str, str]], conditions: list[Any], fan_out: bool) -> list[str]:
    """The distributed tables of one query level not filtered by their distribution
    column equal to a parameter, directly or through an equal column of a filtered one."""
    distributed = {
        alias: (table, column)
        for alias, table in relations
        if table in distribution.TABLES or table in distribution.VIEWS
        if (column := distribution.distribution_column(table)) is not None
    }
    if fan_out or not distributed:
        return []

    def owner(ref: tuple[str | None, str]) -> str | None:
        alias, name = ref
        if alias is not None:
            return alias if alias in distributed and distributed[alias][1] == name else None
        owners = [a for a, (_, column) in distributed.items() if column == name]
        return owners[0] if len(owners) == 1 else None

    pinned: set[str] = set()
    links: list[tuple[str, str]] = []
    for cond in conditions:
        for c in _conjuncts(cond):
            if not (isinstance(c, ast.A_Expr) and c.name and c.name[-1].sval == "="):
                continue
            left, right = _column(c.lexpr), _column(c.rexpr)
            for side, other in ((left, c.rexpr), (right, c.lexpr)):
                if side is not None and (alias := owner(side)) and _is_param(other):
                    pinned.add(alias)
            if left and right and (a := owner(left)) and (b := owner(right)):
                links.append((a, b))
    changed = True
    while changed:
        changed = False
        for a, b in links:
            if (a in pinned) != (b in pinned):
                pinned |= {a, b}
                changed = True
    return sorted(distributed[a][0] for a in distributed if a not in pinned)


def _levels(stmt: Any) -> Iterator[tuple[list[tuple[str, str]], list[Any]]]:
    """Every query level of a statement: the tables it names and its conditions."""
    for node in _walk(stmt):
        if isinstance(node, ast.SelectStmt) and node.op == enums.SetOperation.SETOP_NONE:
            relations = list(_relations(node.fromClause))
            yield relations, [node.whereClause, *_join_quals(node.fromClause)]
        elif isinstance(node, ast.UpdateStmt):
            relations = list(_relations((node.relation, *(node.fromClause or ()))))
            yield relations, [node.whereClause, *_join_quals(node.fromClause)]
        elif isinstance(node, ast.DeleteStmt):
            relations = list(_relations((node.relation, *(node.usingClause or ()))))
            yield relations, [node.whereClause]


def _parseable(sql: str) -> str:
    """The query with psycopg's %(name)s placeholders as $n, for the parser."""
    names: dict[str, int] = {}
    return re.sub(r"%\((\w+)\)s", lambda m: f"${names.setdefault(m.group(1), len(names) + 1)}", sql)


def query_problems(
    name: str, sql: str, fan_outs: dict[str, str] = distribution.FAN_OUTS
) -> list[str]:
    """What in one named query a Citus cluster would refuse or fan out unannounced."""
    problems: list[str] = []
    fan_out = name in fan_outs
    for raw in pglast.parse_sql(_parseable(sql)):
        stmt = raw.stmt
        for relations, conditions in _levels(stmt):
            for table in _unpinned(relations, conditions, fan_out):
                problems.append(
                    f"{name}: {table} is not filtered by its distribution column with a "
                    "parameter (or declare the query a fan-out)"
                )
        for node in _walk(stmt):
            if isinstance(node, ast.CommonTableExpr) and _contains(
                node.ctequery, lambda n: isinstance(n, ast.SelectStmt) and n.lockingClause
            ):
                problems.append(f"{name}: a row lock inside the CTE {node.ctename}")
            if isinstance(node, ast.SelectStmt) and node.lockingClause and fan_out:
                problems.append(f"{name}: a row lock in a fan-out")
            if isinstance(node, ast.UpdateStmt):
                problems += _set_problems(name, node.targetList, "UPDATE SET")
            if isinstance(node, ast.InsertStmt) and node.onConflictClause is not None:
                for target in node.onConflictClause.targetList or ():
                    if _contains(target.val, _is_now_like):
                        problems.append(
                            f"{name}: {target.name}: a now()-like function in "
                            "ON CONFLICT DO UPDATE SET"
                        )
    return problems


def _set_problems(name: str, targets: Any, where: str) -> list[str]:
    problems = []
    for target in targets or ():
        value = target.val
        for node in _walk(value):
            if isinstance(node, ast.CaseExpr | ast.CoalesceExpr | ast.MinMaxExpr) and _contains(
                node, _is_now_like
            ):
                problems.append(
                    f"{name}: {target.name}: a now()-like function inside CASE/COALESCE in {where}"
                )
                break
        else:
            if _contains(value, _is_now_like) and _contains(
                value, lambda n: isinstance(n, ast.ColumnRef)
            ):
                problems.append(
                    f"{name}: {target.name}: a now()-like function with a column in {where}"
                )
    return problems
