"""sql/schema.sql shows the schema the migrations produce: applied to an empty database,
it ends in the same catalog (columns, defaults, constraints, indexes, views, storage
options) as the numbered migrations, so the file a reader opens cannot drift."""

from __future__ import annotations

from importlib import resources

import psycopg

from delivery_service.store.connection import render

# One row per fact of the public schema, in a stable order.
CATALOG = """
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE a.attidentity WHEN '' THEN '' ELSE ' identity ' || a.attidentity::text END
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v')
  AND c.relname <> 'schema_migrations'
UNION ALL
SELECT 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
WHERE c.relname <> 'schema_migrations'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
UNION ALL
SELECT 'view', viewname, pg_get_viewdef(viewname::regclass) FROM pg_views
WHERE schemaname = 'public'
UNION ALL
SELECT 'options', c.relname, array_to_string(c.reloptions, ',')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
WHERE c.reloptions IS NOT NULL
ORDER BY 1, 2, 3
"""


def catalog(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(CATALOG).fetchall()


def test_schema_sql_is_what_the_migrations_produce(fresh_db_url: str, empty_db_url: str) -> None:
    schema = (resources.files("delivery_service") / "sql" / "schema.sql").read_text("utf-8")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(render(schema).encode())
    migrated = catalog(fresh_db_url)
    assert migrated, "the catalog query saw no table"
    assert catalog(empty_db_url) == migrated
