"""Data: TOFU-format loaders, QA collation, seeded paired sampling."""
