"""The experiments behind the CLIs of the same names: configs, runs, typed results, tables."""
