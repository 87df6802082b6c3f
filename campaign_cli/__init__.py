"""`campaign`: the operator CLI of the delivery service; tables for people, `--json` for scripts."""
