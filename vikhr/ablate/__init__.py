"""`vikhr ablate`: the grid of small experiments behind the paper's claims (docs/ablations.md)."""
