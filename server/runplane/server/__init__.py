"""The runplane server: gRPC transport -> domain rules -> SQL store.

Data flows one way. `servicer` speaks gRPC and protobuf only and turns each request
into its `requests` dataclass (through `validation`); `runs`, `claims`, `sweeper` and
`watch` hold the rules and reach the database only through the `UnitOfWork` that
`store.database.Database` hands them; `store` speaks SQL only, keeps every
SQLite/PostgreSQL difference to itself and assigns the global revision to every
committed change.
"""
