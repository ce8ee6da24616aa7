"""Study reporting: the results table, summary statistics with intervals, and plots."""
