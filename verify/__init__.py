"""Orchestration and presentation: train or load, evaluate, predict, report."""
