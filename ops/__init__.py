"""How gdpr is installed, run and tested; the demo and its output helpers."""
