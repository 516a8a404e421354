"""Speed and memory benchmarks (not tests); `make bench` runs them and writes JSON results."""
