# Prompt learning: one job per (protocol, method, dataset, shots, seed); each claims its own GPU.


rule train:
    input:
        params=PARAMS,
        manifest=lambda w: manifest(w.dataset, SUBSET[w.trained], w.shots, w.seed),
        cache=lambda w: train_cache(w.dataset, SUBSET[w.trained], w.shots, w.seed),
    output:
        prompts=f"{RUNS}/{{trained}}/{{method}}/{{dataset}}_{{shots}}shot/seed{{seed}}/prompts.safetensors",
        summary=f"{RUNS}/{{trained}}/{{method}}/{{dataset}}_{{shots}}shot/seed{{seed}}/train.json",
    params:
        out=lambda w: run_dir(w.trained, w.method, w.dataset, w.shots, w.seed),
    resources:
        gpu=1,
    log:
        f"{RUNS}/logs/train/{{trained}}_{{method}}_{{dataset}}_{{shots}}shot_seed{{seed}}.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot train --params {input.params} --protocol {wildcards.trained} --method {wildcards.method}"
        " --seed {wildcards.seed} --manifest {input.manifest} --train-cache {input.cache}"
        " --out {params.out} > {log} 2>&1"
