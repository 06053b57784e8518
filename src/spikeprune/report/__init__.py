"""Tables and plots of results (reads result files; never trains)."""
