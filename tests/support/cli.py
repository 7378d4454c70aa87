"""The command line in tests: ``argv`` writes a command's words from keyword options, ``TINY_CPU`` the options that
put a stage on the tiny ViT without pretrained weights on the CPU, and ``manifest_and_cache`` makes a few-shot
manifest and its train cache through the CLI, as the pipeline's first two stages do; ``train_argv`` is the
``train`` command of one run and ``evaluate_argv`` the ``evaluate`` command of its prompts."""

from __future__ import annotations

TINY_CPU = {"backbone": "tiny-vit", "pretrained": "none", "device": "cpu"}


def argv(*command: object, **options: object) -> list[str]:
    """The words of ``command``, then ``--name value`` for each option in the order given, every word a string.

    Underscores in a name become dashes (``train_cache`` -> ``--train-cache``); a list or tuple gives several values
    after one flag (``seed=[1, 2]`` -> ``--seed 1 2``); ``True`` gives the bare flag; ``None`` and ``False`` leave the
    option out."""
    words = [str(word) for word in command]
    for name, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + name.replace("_", "-"))
        if value is not True:
            words += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return words


def manifest_and_cache(root, manifest, cache, *, dataset="dtd", subset="base", shots=2, seed=1, **cache_options):
    """``split`` then ``cache train`` through the CLI, each of which must succeed: a few-shot manifest of ``dataset``
    (under the data root ``root``) written to ``manifest``, and its train cache (``TINY_CPU``) to ``cache``.
    ``cache_options`` go to ``cache train``: ``epochs=2`` or ``params=...`` says how many epochs of views it holds."""
    from prompt_ot.cli import main

    assert main(argv("split", dataset, root=root, subset=subset, shots=shots, seed=seed, out=manifest)) == 0
    options = {"manifest": manifest, "root": root, **TINY_CPU, "seed": seed, "out": cache, **cache_options}
    assert main(argv("cache", "train", **options)) == 0


def train_argv(params, method, manifest, train_cache, out, *, protocol="base2novel", seed=1, device="cpu", **options):
    """The words of ``train`` for one run (``device=None`` leaves ``--device`` out); ``options`` are added after."""
    run = {"manifest": manifest, "train_cache": train_cache, "out": out, "device": device, **options}
    return argv("train", params=params, protocol=protocol, method=method, seed=seed, **run)


def evaluate_argv(params, method, prompts, test_cache_root, out, *, protocol="base2novel", **options):
    """The words of ``evaluate`` for the prompts of one run; ``options`` change or add to dtd, 2 shots, seed 1, CPU."""
    run = {"dataset": "dtd", "shots": 2, "seed": 1, "prompts": prompts, "test_cache_root": test_cache_root, "out": out}
    return argv("evaluate", params=params, protocol=protocol, method=method, **(run | {"device": "cpu"} | options))
