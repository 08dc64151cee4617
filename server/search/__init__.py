"""The experiment driver: the I/O edge between the log and the experiments' searchers."""
