"""Terrain: topographic sinks from a DEM (depression filling, depth, sink polygons with area and
volume), within a memory budget checked before any work (``budget``).
"""
