"""Generated stubs for recsys.v1 (do not edit; run `make proto`)."""
