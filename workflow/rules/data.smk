# Datasets: download (or prepare, for the demo data) and few-shot manifests.


rule download:
    output:
        stamp("{dataset}"),
    params:
        data=DATA,
        declared=lambda w: declared(w.dataset),  # a changed declaration or override reruns the stage
    log:
        f"{BASE_RUNS}/logs/download/{{dataset}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot download {wildcards.dataset} --root {params.data} --stamp {output}"
        f" --params {PARAMS} > {{log}} 2>&1"


rule split:
    input:
        stamp("{dataset}"),
    output:
        manifest("{dataset}", "{subset}", "{shots}", "{seed}"),
    params:
        data=DATA,
        sampler=SAMPLER,
    log:
        f"{BASE_RUNS}/logs/split/{{dataset}}_{{subset}}_{{shots}}shot_seed{{seed}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot split {wildcards.dataset} --root {params.data} --subset {wildcards.subset}"
        " --shots {wildcards.shots} --seed {wildcards.seed} --sampler {params.sampler} --out {output}"
        f" --params {PARAMS} > {{log}} 2>&1"


rule backbone:
    input:
        params=PARAMS,
        stamps=[stamp(d) for d in PRETRAIN_DATASETS],
    output:
        directory(BACKBONE_DIR),
    params:
        data=DATA,
    threads: PRETRAIN_THREADS
    resources:
        gpu=1,
    log:
        f"{RUNS}/logs/backbone.log",
    conda:
        ENV
    shell:
        f"python -m prompt_ot backbone --params {{input.params}} --root {{params.data}} --out {{output}}{BK_ARG}"
        " > {log} 2>&1"
