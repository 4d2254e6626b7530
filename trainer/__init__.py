"""Progressive-growing GAN trainer (Karras et al. 2018): networks, data, losses, loop, export, metrics."""
