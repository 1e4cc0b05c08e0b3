"""asv benchmarks for ctvol (see asv.conf.json; run with `make bench`)."""
