# Frozen-backbone features, computed once: test images and class texts per dataset, training views per manifest.
# How many epochs of views and at which precision follow from params.yaml (the grid's recipes), which the
# commands read themselves (--params) so that Snakemake and DVC run the same command.


rule cache_test:
    input:
        stamp("{dataset}"),
        BACKBONE_DIR,
    output:
        directory(test_cache("{dataset}")),
    params:
        data=DATA,
        backbone=backbone_of,  # the command reads it from --params; a change rebuilds the cache
        precision=lambda w: test_cache_precision(config, w.dataset),  # derived from --params; a change rebuilds
    resources:
        gpu=1,
    log:
        f"{RUNS}/logs/cache_test/{{dataset}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot cache test {wildcards.dataset} --params params.yaml --root {params.data}"
        f" --out {{output}}{BK_ARG} > {{log}} 2>&1"


rule cache_train:
    input:
        manifest=manifest("{dataset}", "{subset}", "{shots}", "{seed}"),
        backbone=BACKBONE_DIR,
    output:
        directory(train_cache("{dataset}", "{subset}", "{shots}", "{seed}")),
    params:
        data=DATA,
        backbone=backbone_of,  # the command reads it from --params; a change rebuilds the cache
        settings=cache_settings,  # derived from --params (epochs, precision); a change rebuilds the cache
    resources:
        gpu=1,
    log:
        f"{RUNS}/logs/cache_train/{{dataset}}_{{subset}}_{{shots}}shot_seed{{seed}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot cache train --params params.yaml --manifest {input.manifest} --root {params.data}"
        f" --seed {{wildcards.seed}} --out {{output}}{BK_ARG} > {{log}} 2>&1"
