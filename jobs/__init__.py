"""The example jobs. In the wheel this folder is the package `pipeline.examples` (pyproject.toml maps it,
as it maps migrations/), so `pipeline demo` finds them in an installed package too."""
