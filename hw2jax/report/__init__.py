"""The whole report: what it runs (config), running it (run), its results, REPORT.md (render)."""
