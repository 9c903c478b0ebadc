"""Test dummies shipped with the package, by purpose: ``media`` (clips and bad inputs),
``workers`` (functions child processes import by name), ``runner`` (the CLI in tests),
``recipes`` (acceptance recipes, shared with benchmarks), ``servers`` (local HTTP and S3)."""
