"""Face rate: the share of images in which OpenCV's bundled frontal-face Haar cascade finds a face."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"


class FaceDetectorError(RuntimeError):
    """OpenCV or its bundled cascade is missing."""


@dataclass(frozen=True)
class DetectorParams:
    size: int = 128  # images are resized to size x size (grey) first: the cascade's smallest face is 24 px
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_face_frac: float = 0.4  # smallest face side, as a share of `size`: a face crop fills the frame

    def describe(self) -> dict[str, object]:
        return {"detector": f"OpenCV Haar cascade {CASCADE_FILE}", **asdict(self)}


class FaceDetector:
    def __init__(self, params: DetectorParams = DetectorParams()) -> None:
        try:
            import cv2
        except ImportError as e:
            raise FaceDetectorError(
                "the face rate needs OpenCV: pip install 'opencv-python-headless>=4.8,<5'"
            ) from e
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise FaceDetectorError(
                f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 moved them out of the main "
                "package): pip install 'opencv-python-headless>=4.8,<5'"
            )
        path = cv2.data.haarcascades + CASCADE_FILE  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise FaceDetectorError(f"OpenCV could not load its bundled face cascade {path}")
        self.cv2, self.params = cv2, params

    def has_face(self, image: np.ndarray) -> bool:
        """One uint8 RGB image [H, W, 3]."""
        cv2, p = self.cv2, self.params
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        if grey.shape != (p.size, p.size):
            up = grey.shape[0] < p.size
            grey = cv2.resize(
                grey, (p.size, p.size), interpolation=cv2.INTER_LINEAR if up else cv2.INTER_AREA
            )
        side = int(p.size * p.min_face_frac)
        faces = self.cascade.detectMultiScale(
            grey, scaleFactor=p.scale_factor, minNeighbors=p.min_neighbors, minSize=(side, side)
        )
        return len(faces) > 0

    def count(self, images: np.ndarray) -> int:
        """How many of the uint8 images [N, H, W, 3] show a face."""
        assert images.ndim == 4 and images.shape[-1] == 3, f"images must be [N, H, W, 3], got {images.shape}"
        return sum(self.has_face(im) for im in images)


def face_rate(batches: Iterable[np.ndarray], detector: FaceDetector | None = None) -> float:
    """Share of images with a face, over uint8 batches [n, H, W, 3]."""
    det = detector or FaceDetector()
    hits, total = 0, 0
    for b in batches:
        hits += det.count(b)
        total += len(b)
    if total == 0:
        raise ValueError("the face rate needs at least one image")
    return hits / total
