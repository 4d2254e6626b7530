"""Sample-quality metrics: FID and KID on NVIDIA's FID Inception features, MS-SSIM diversity, face rate.

`python -m trainer evaluate` (trainer/evaluate.py) runs them all; each module here is usable alone."""
