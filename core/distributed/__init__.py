"""Past one machine: Segment Raster's blocks on a Dask cluster, Train Model under DDP."""
