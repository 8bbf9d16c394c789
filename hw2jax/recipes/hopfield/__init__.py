"""The Hopfield experiment (Q1): claims, retrieval, capacity, and the run of all three."""
