"""Storage: the only package of the service that speaks SQL.

One module per flow, over one connection layer (`connection`: the pool, the named
queries of sql/queries/, driver errors turned into the store's own): `deliveries`,
`preparation`, `relay`, `ingest`, `counters`, `expiry`, `recurring`, `logs`,
`profiles`, `operators`; `records` holds the typed rows they return and `migrations`
the schema manager. Modules here take a connection (or the Database) and do what
they are asked: the decisions are the domain's and the use cases' (usecases/).
"""
