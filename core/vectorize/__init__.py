"""Vectorisation: class rasters to polygons with sieving, dissolving and geodesic measures."""
