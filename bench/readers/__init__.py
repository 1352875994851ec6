"""The readers of results: what turns run directories into reports, comparisons and merged runs."""
