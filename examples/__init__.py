"""Outside models wrapped for the density-model contract (empirical.contract); each runs through verify.compare."""
