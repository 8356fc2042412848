"""bench/run's modules: processes, builds, the measured sections and the report."""
