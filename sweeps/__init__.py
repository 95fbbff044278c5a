"""What to run: sweep specs, launching on Ray, and the `satsweep` command line."""
