"""recsys core: shared by training/ (offline) and serving/ (online).

The artifact format and the feature schema are defined here; this package imports neither
`training` nor `serving`, nor grpc.
"""

__version__ = "0.1.0"
