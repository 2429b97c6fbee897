"""Plumbing: where bytes live (backend), content-addressed chunks, and the metadata database."""
