"""Measurement code shared by `erbnn bench` and the pytest-benchmark suites in bench/."""
