"""Training: Train Model's inputs (``inputs``), grid tiles and the spatial validation split
(``dataset``), class-balanced random training windows (``windows``), losses and class weights
(``losses``), augmentation (``augment``), the run clock and learning-rate schedule
(``schedule``), device-suited defaults (``defaults``), the supervised loop (``loop``), the
label-free encoder training (``labelfree``), the job that ties them together (``job``) and the
HTML training report (``report``).

For distributed training (one process per GPU), a wrapper gives each rank its own seeded
generator for ``RandomWindows.epoch_batches`` and wraps the network before ``Trainer``:
``Trainer.step`` is the one place where the optimizer steps.
"""
