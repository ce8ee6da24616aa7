"""Study reporting, read-only over the workdir's records: summary with intervals, plots, analyses, report.html."""
