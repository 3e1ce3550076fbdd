"""The paper's second-order explanation: symbolic derivation, dataset statistics, predicted gaps."""
