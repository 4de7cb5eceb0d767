"""Small real images for the data tests, encoded with Pillow."""

import io

from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112


def encoded_image(size=(16, 12), color=(200, 30, 30), fmt="JPEG", mode="RGB") -> bytes:
    """One solid image encoded as ``fmt``."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


def two_colour_jpeg_with_orientation(orientation: int) -> bytes:
    """A 64x32 JPEG, left half red and right half blue, tagged with an EXIF orientation."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def noisy_jpeg(size=(64, 64), seed=0) -> bytes:
    """A JPEG with enough entropy that cutting it in half really truncates the scan data."""
    import random

    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
