"""Cross-slide benchmark tables, figures and runtimes for the Snakemake report."""
