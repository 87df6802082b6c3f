"""What both gRPC servers of the project share: their settings (flags and environment
variables), the serving skeleton (server, health, reflection, graceful shutdown),
request ids, RPC logs and metrics, and the loader of named SQL queries."""
