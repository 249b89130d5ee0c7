"""Past one machine: Segment Raster's blocks on a Dask cluster, Train Model under DDP."""

DDP_DEVICE = "cuda_ddp"  # Train Model's DEVICE: all CUDA GPUs, one process each (launch.py)
