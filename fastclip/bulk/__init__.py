"""Bulk embedding beside the runtime: a local process pool and Ray (ray.py)."""
