-- The roles of the delivery service's database, made once, on the first start of an
-- empty data directory (the postgres image runs this with psql, as the superuser, on the
-- database POSTGRES_DB = delivery). Their passwords are the files the compose file's
-- `secrets` one-shot generated.
--   delivery_owner  owns the database and its schema: the migrations run as it.
--   delivery_app    the running service: DML on the tables the owner creates, nothing else
--                   (no DDL, no ownership, no superuser).

\set ON_ERROR_STOP on
\set owner_password `cat /run/secrets/db/owner`
\set runtime_password `cat /run/secrets/db/runtime`

CREATE ROLE delivery_owner LOGIN PASSWORD :'owner_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE ROLE delivery_app LOGIN PASSWORD :'runtime_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

ALTER DATABASE delivery OWNER TO delivery_owner;
REVOKE ALL ON DATABASE delivery FROM PUBLIC;
-- TEMPORARY: preparation analyses a target in a temporary table.
GRANT CONNECT, TEMPORARY ON DATABASE delivery TO delivery_app;

\connect delivery
ALTER SCHEMA public OWNER TO delivery_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO delivery_app;
-- What the owner's migrations create, the service may read and write, and only that.
ALTER DEFAULT PRIVILEGES FOR ROLE delivery_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO delivery_app;
ALTER DEFAULT PRIVILEGES FOR ROLE delivery_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO delivery_app;
