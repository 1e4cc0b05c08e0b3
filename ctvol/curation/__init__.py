"""Curation: slice classification, blank removal, gap filling, the slice localizer."""
