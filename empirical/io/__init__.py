"""Plumbing every other part uses and that uses none of them: errors, atomic and staged writes, locks, the split
transfer format, provenance (commit, device, file records) and the torchrun process group (ranks, shards,
collectives)."""
