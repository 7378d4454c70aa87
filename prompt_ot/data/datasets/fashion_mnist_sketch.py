"""Fashion-MNIST-Sketch (offline demo, domain generalisation target): the test images drawn as sketches.

Like ImageNet-Sketch for ImageNet: 200 test images per class (2,000 in all, a fixed-seed sample shared with
Fashion-MNIST-R), each drawn as its edge map: dark lines (0) where the Sobel gradient magnitude is at least 0.2 of
the image's largest, white (255) elsewhere, grey stored as RGB (``prompt_ot.data.shifts.sketch``). Built from the
Fashion-MNIST source files. Test split only.
"""

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist

DATASET = shifts.shifted_dataset(
    name="fashion_mnist_sketch",
    source=fashion_mnist.DATASET,
    load=fashion_mnist.load_arrays,
    shift=shifts.sketch_arrays,
    split_file="split_zhou_FashionMNISTSketch.json",
    test_images=2000,
    notes="offline demo DG target: 2,000 Fashion-MNIST test images as Sobel edge sketches, 28x28 grey as RGB",
)
