"""Namespace for the recsys.* proto packages. Importable as `proto.recsys`, never as `recsys`."""
