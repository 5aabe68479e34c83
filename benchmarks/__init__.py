"""jaxreg's benchmarks: ``python -m benchmarks.run [--quick] [--json PATH]`` (or ``jaxreg bench``)."""
