"""Privacy by default: pseudonymisation at the boundary (erasure and differential privacy build on it)."""
