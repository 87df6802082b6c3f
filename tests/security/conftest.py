"""The security tests use the integration tests' pair of processes."""

from tests.integration.conftest import empty_db_url, module_pair, pair

__all__ = ["empty_db_url", "module_pair", "pair"]
