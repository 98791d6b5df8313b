"""Training the denoiser, the bridge fine-tune and the stand-in metric, with their shared run
bookkeeping (``denoiser_run``)."""
