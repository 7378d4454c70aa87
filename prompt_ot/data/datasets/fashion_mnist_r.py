"""Fashion-MNIST-R (offline demo, domain generalisation target): the test images re-drawn as flat-colour posters.

Like ImageNet-R (renditions) for ImageNet: the 2,000 test images of Fashion-MNIST-Sketch, each re-drawn as a
poster: pixels below grey 8 are background, the others are quantised to 3 equal-width grey levels, and background
and levels take a palette of 4 colours drawn per image with a fixed seed, the levels' colours ordered dark to light
(``prompt_ot.data.shifts.poster``). Built from the Fashion-MNIST source files. Test split only, RGB.
"""

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist

DATASET = shifts.shifted_dataset(
    name="fashion_mnist_r",
    source=fashion_mnist.DATASET,
    load=fashion_mnist.load_arrays,
    shift=shifts.rendition_arrays,
    split_file="split_zhou_FashionMNISTR.json",
    test_images=2000,
    notes="offline demo DG target: 2,000 Fashion-MNIST test images as 3-level colour posters, 28x28 RGB",
)
