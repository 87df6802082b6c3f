"""The benchmarks behind `make bench`: relay, feedback ingest, the database's ceiling,
GetKpis latency, ComputeStats and the abuse workload (watch streams, large lists),
against a real PostgreSQL with both services as real processes. See
docs/performance.md for the figures and how to read them."""
