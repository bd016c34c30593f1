"""Online serving: the recsys.v1.Recommender gRPC service.

- `serving.service`: the domain service (validation, cached store reads, degraded mode, model calls);
  no grpc.
- `serving.server`: the thin servicers (Recommender, Admin), `build_server(config)` and `serve(config)`.
- `serving.config`: `ServerConfig` and its sources (TOML file, `RECSYS_*` environment, flags).
- `serving.errors`: the one interceptor that turns `recsys.errors.RecsysError` into gRPC statuses;
  `serving.interceptors`: request ids, metrics and access logs around it, tokens and limits inside it.
- `serving.cache`: the user-state LRU cache; `serving.metrics`: Prometheus series and `/metrics`;
  `serving.reload`: hot model reload; `serving.logs`: text or JSON log lines.
- `serving.client`: a small sync client and CLI; `serving.healthcheck`: the container health probe;
  `serving.features`: the Redis bulk loader (`python -m serving.features load`).

This package imports `recsys` (the core) and never `training`.
"""
