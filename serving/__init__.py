"""Online serving: the recsys.v1.Recommender gRPC service.

- `serving.service`: the domain service (validation, store reads/writes, model calls); no grpc.
- `serving.server`: the thin servicer, `ServerConfig`, `build_server(config)` and `serve(config)`.
- `serving.errors`: the one interceptor that turns `recsys.errors.RecsysError` into gRPC statuses.
- `serving.client`: a small sync client and CLI; `serving.healthcheck`: the container health probe.

This package imports `recsys` (the core) and never `training`.
"""
