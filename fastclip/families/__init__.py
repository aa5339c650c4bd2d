"""Per-family recipes as data: small tables keyed by the strings a manifest records.

A new model family adds entries here rather than branches in the data path (STYLE.md, "Families as data").
"""
