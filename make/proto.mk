# `make proto`: regenerate the committed gRPC stubs from proto/recsys/v1/recommender.proto.
#
# Included by the main Makefile and run from the repository root, so the generated code imports
# `from proto.recsys.v1 import recommender_pb2` (the top-level `recsys` package is our core; the stubs
# must never be importable as `recsys.v1`). grpcio-tools is pinned in pyproject.toml, and
# tests/test_proto_stubs.py fails when the committed stubs differ from a fresh generation. Commit the
# regenerated *_pb2.py, *_pb2_grpc.py and *_pb2.pyi together with the .proto change.

PY ?= .venv/bin/python
PROTOS := proto/recsys/v1/recommender.proto

.PHONY: proto
proto: ## regenerate proto/recsys/v1/*_pb2*.py[i] from the .proto files
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
