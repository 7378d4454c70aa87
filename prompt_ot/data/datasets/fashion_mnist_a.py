"""Fashion-MNIST-A (offline demo, domain generalisation target): test images another model gets wrong.

Like ImageNet-A for ImageNet (images a chosen model misclassifies): the Fashion-MNIST test images that a
nearest-class-mean classifier on raw pixels (scaled to [0, 1]), fitted on Fashion-MNIST's train part, gets wrong;
when there are more than 2,000, a fixed-seed class-stratified sample of 2,000 of them
(``prompt_ot.data.shifts.adversarial_arrays``). On the real data the classifier gets 3,223 of the 10,000 wrong, so
the set is that sample of 2,000. Built from the Fashion-MNIST source files. Test split only.
"""

from prompt_ot.data import shifts
from prompt_ot.data.datasets import fashion_mnist

DATASET = shifts.shifted_dataset(
    name="fashion_mnist_a",
    source=fashion_mnist.DATASET,
    load=fashion_mnist.load_arrays,
    shift=shifts.adversarial_arrays,
    split_file="split_zhou_FashionMNISTA.json",
    test_images=2000,
    notes="offline demo DG target: 2,000 of the 3,223 Fashion-MNIST test images a nearest-class-mean classifier misses",
)
