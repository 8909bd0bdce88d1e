"""Speed and quality benchmarks; every ratio is measured within one run."""
