"""Frontends decide *when* a transaction starts and ends, and which names it could touch; the
Session does the rest. ``ipython``: every notebook cell is a transaction."""
