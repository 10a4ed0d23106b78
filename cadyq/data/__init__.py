"""Image I/O, MATLAB-compatible bicubic resizing and evaluation-folder layouts."""
from cadyq.data.io import (IMAGE_EXTENSIONS, Image, from_tensor, list_images, read_image, to_tensor,
                           write_image)
from cadyq.data.layouts import EXPECTED_LAYOUTS, Pair, find_pairs, load_pair
from cadyq.data.resize import bicubic_downscale, contributions, imresize, mod_crop

__all__ = [
    "IMAGE_EXTENSIONS", "Image", "read_image", "write_image", "to_tensor", "from_tensor", "list_images",
    "imresize", "bicubic_downscale", "mod_crop", "contributions",
    "Pair", "find_pairs", "load_pair", "EXPECTED_LAYOUTS",
]
