"""The runplane server: gRPC transport -> domain rules -> SQL store.

Data flows one way. `servicer` speaks gRPC and protobuf only; `runs` holds the
rules (multitask strategies, transitions); `store` speaks SQL only and assigns
the global revision to every committed change.
"""
