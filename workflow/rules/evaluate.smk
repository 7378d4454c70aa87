# Evaluation: base and novel accuracy (base2novel), source and targets (cross-dataset, domain generalisation),
# all classes (few-shot). One metrics file per run. The command reads test caches under the test-cache root;
# the inputs name each one so that Snakemake builds them first. Domain generalisation evaluates the prompts of a
# cross-dataset source: the source's own test set is taken from that run's cross-dataset predictions (--reuse).
# With `evaluate: {pack: true}` one job per (protocol, method, dataset, shots) evaluates every seed in turn, the
# backbone and test caches read once; each seed's files have the same bytes as its own job's (DVC always evaluates
# one seed).

def _evaluate_shell(seeds, prompts, outs, reuse):
    return (
        "python -m prompt_ot evaluate --params {input.params} --protocol {params.protocol}"
        " --method {wildcards.method} --dataset {wildcards.dataset} --shots {wildcards.shots}"
        f" --seed {seeds} --prompts {prompts} --test-cache-root {{params.cache_root}}"
        f"{{params.targets}}{reuse} --out {outs}{BK_ARG} > {{log}} 2>&1"
    )


for _protocol in TRAINED_BY:
    if not EVAL_PACK:

        rule:
            name:
                f"evaluate_{_protocol}"
            input:
                unpack(eval_inputs(_protocol)),
            output:
                metrics=f"{RUNS}/{_protocol}/{{method}}/{{dataset}}_{{shots}}shot/seed{{seed}}/metrics.json",
                # each test image's predicted and true label, which the report's paired statistics read
                predictions=f"{RUNS}/{_protocol}/{{method}}/{{dataset}}_{{shots}}shot/seed{{seed}}/predictions.npz",
            params:
                protocol=_protocol,
                cache_root=f"{CACHE}/test",
                targets=targets_arg(_protocol),
                reuse=reuse_arg,
            resources:
                gpu=1,
            log:
                f"{RUNS}/logs/evaluate/{_protocol}_{{method}}_{{dataset}}_{{shots}}shot_seed{{seed}}.log",
            conda:
                ENV
            shell:
                _evaluate_shell("{wildcards.seed}", "{input.prompts}", "{output.metrics}", "{params.reuse}")

    else:

        rule:
            name:
                f"evaluate_{_protocol}_pack"
            input:
                unpack(eval_inputs(_protocol, SEEDS)),
            output:
                metrics=[f"{RUNS}/{_protocol}/{{method}}/{{dataset}}_{{shots}}shot/seed{s}/metrics.json" for s in SEEDS],
                predictions=[
                    f"{RUNS}/{_protocol}/{{method}}/{{dataset}}_{{shots}}shot/seed{s}/predictions.npz" for s in SEEDS
                ],
            params:
                protocol=_protocol,
                cache_root=f"{CACHE}/test",
                targets=targets_arg(_protocol),
                reuse=reuse_arg,
                seeds=" ".join(str(s) for s in SEEDS),
            resources:
                gpu=1,
            log:
                f"{RUNS}/logs/evaluate/{_protocol}_{{method}}_{{dataset}}_{{shots}}shot_packed.log",
            conda:
                ENV
            shell:
                _evaluate_shell("{params.seeds}", "{input.prompts}", "{output.metrics}", "{params.reuse}")
