"""Speed benchmarks: run all with ``python -m benchmarks`` (``make bench``)."""
