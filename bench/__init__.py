"""Speed benchmark of our pipeline against an official-style loop (`python -m bench.benchmark`)."""
