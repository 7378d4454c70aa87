# Frozen-backbone features, computed once: test images and class texts per dataset, training views per manifest.


rule cache_test:
    input:
        stamp("{dataset}"),
        BACKBONE_DIR,
    output:
        directory(test_cache("{dataset}")),
    params:
        data=DATA,
        backbone=BACKBONE,
        pretrained=PRETRAINED,
    resources:
        gpu=1,
    log:
        f"{RUNS}/logs/cache_test/{{dataset}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot cache test {wildcards.dataset} --root {params.data} --backbone {params.backbone}"
        " --pretrained {params.pretrained} --out {output} > {log} 2>&1"


rule cache_train:
    input:
        manifest=manifest("{dataset}", "{subset}", "{shots}", "{seed}"),
        backbone=BACKBONE_DIR,
    output:
        directory(train_cache("{dataset}", "{subset}", "{shots}", "{seed}")),
    params:
        data=DATA,
        backbone=BACKBONE,
        pretrained=PRETRAINED,
        epochs=EPOCHS,
    resources:
        gpu=1,
    log:
        f"{RUNS}/logs/cache_train/{{dataset}}_{{subset}}_{{shots}}shot_seed{{seed}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot cache train --manifest {input.manifest} --root {params.data} --backbone {params.backbone}"
        " --pretrained {params.pretrained} --epochs {params.epochs} --seed {wildcards.seed} --out {output}"
        " > {log} 2>&1"
