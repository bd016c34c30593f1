"""Offline: read click logs, train the BST, evaluate against baselines, export the artifact."""
