"""Benchmarks behind ``hivecell bench``: medians and ratios against a peer in the same run."""
