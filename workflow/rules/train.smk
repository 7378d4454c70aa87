# Prompt learning: one job per (protocol, method, dataset, shots, seed), each claiming its own GPU; with
# `train: {pack: true}` one job per (protocol, method, dataset, shots) trains all seeds packed in one
# process, sharing each frozen-backbone forward (each run still writes its own folder).

if not PACK:

    rule train:
        input:
            params=PARAMS,
            manifest=lambda w: bk(w, manifest(w.dataset, SUBSET[w.trained], w.shots, w.seed)),
            cache=lambda w: bk(w, train_cache(w.dataset, SUBSET[w.trained], w.shots, w.seed)),
        output:
            prompts=f"{RUNS}/{{trained}}/{{method}}/{{dataset}}_{{shots}}shot/seed{{seed}}/prompts.safetensors",
            summary=f"{RUNS}/{{trained}}/{{method}}/{{dataset}}_{{shots}}shot/seed{{seed}}/train.json",
        params:
            out=lambda w: bk(w, run_dir(w.trained, w.method, w.dataset, w.shots, w.seed)),
        resources:
            gpu=1,
        log:
            f"{RUNS}/logs/train/{{trained}}_{{method}}_{{dataset}}_{{shots}}shot_seed{{seed}}.log",
        conda:
            ENV
        shell:
            _train_shell("{wildcards.seed}", "{input.manifest}", "{input.cache}", "{params.out}")

else:

    rule train_pack:
        input:
            params=PARAMS,
            manifests=lambda w: [bk(w, manifest(w.dataset, SUBSET[w.trained], w.shots, s)) for s in SEEDS],
            caches=lambda w: [bk(w, train_cache(w.dataset, SUBSET[w.trained], w.shots, s)) for s in SEEDS],
        output:
            prompts=[f"{RUNS}/{{trained}}/{{method}}/{{dataset}}_{{shots}}shot/seed{s}/prompts.safetensors"
                     for s in SEEDS],
            summaries=[f"{RUNS}/{{trained}}/{{method}}/{{dataset}}_{{shots}}shot/seed{s}/train.json" for s in SEEDS],
        params:
            seeds=" ".join(str(s) for s in SEEDS),
            outs=lambda w: " ".join(bk(w, run_dir(w.trained, w.method, w.dataset, w.shots, s)) for s in SEEDS),
        resources:
            gpu=1,
        log:
            f"{RUNS}/logs/train/{{trained}}_{{method}}_{{dataset}}_{{shots}}shot_packed.log",
        conda:
            ENV
        shell:
            _train_shell("{params.seeds}", "{input.manifests}", "{input.caches}", "{params.outs}")
