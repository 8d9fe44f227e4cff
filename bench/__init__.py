"""Side-by-side benchmarks of Flywheel's foundation against real peers, run with `make bench`."""
