"""Training: the denoiser (``ddpm``), its attack-aware bridge fine-tune (``bridge``, and the
leave-one-attack-out study over it), the stand-in metric and its trunk pre-training, the
perturbation detector and universal perturbations, with the shared run bookkeeping
(``denoiser_run``)."""
