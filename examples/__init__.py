"""Outside models wrapped for the density-model contract (empirical.models.contract); each runs through
verify.compare."""
