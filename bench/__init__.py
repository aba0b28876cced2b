"""gemfs benchmarks: `python -m bench.run` (what `make bench` runs) measures a gemfs mount against
the google-genai SDK it wraps, on the same local `gemfs serve`."""
