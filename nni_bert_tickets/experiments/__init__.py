"""Experiments: typed settings, the run store, IMP runs, the paper's tables, the report, the CLI and NNI trials."""
