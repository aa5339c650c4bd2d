"""Per-family recipes as data: small tables keyed by the strings a manifest carries.

A new family adds entries (a resizer, a scorer) instead of editing the path that uses them.
"""
