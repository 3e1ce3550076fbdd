"""Datasets, flows, training and exact bits/dim evaluation."""
