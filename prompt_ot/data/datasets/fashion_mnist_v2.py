"""Fashion-MNIST-V2 (offline demo, domain generalisation target): a fresh sample of the same distribution.

Like ImageNet-V2 for ImageNet: 200 images per class (2,000 in all) drawn with a fixed seed from Fashion-MNIST's
val part, which the demo neither trains nor tests on; images and labels unchanged
(``prompt_ot.data.shifts.v2_arrays``). Built from the Fashion-MNIST source files. Test split only.
"""

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist

DATASET = shifts.shifted_dataset(
    name="fashion_mnist_v2",
    source=fashion_mnist.DATASET,
    load=fashion_mnist.load_arrays,
    shift=shifts.v2_arrays,
    split_file="split_zhou_FashionMNISTV2.json",
    test_images=2000,
    notes="offline demo DG target: 2,000 held-out val images of Fashion-MNIST (200 per class), 28x28 grey as RGB",
)
