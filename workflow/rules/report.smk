# Tables (LaTeX, CSV, Markdown) and figures from every metrics file of the grid.


rule report:
    input:
        params=PARAMS,
        metrics=metrics_files,
    output:
        tables=directory(f"{REPORTS}/tables"),
        figures=directory(f"{REPORTS}/figures"),
        metrics=f"{REPORTS}/metrics.json",  # the headline numbers (prompt_ot/report/summary.py), DVC's metrics
    params:
        runs=lambda w: bk(w, RUNS),
        published=PUBLISHED,
        out=lambda w, output: os.path.dirname(output.tables),
    log:
        f"{RUNS}/logs/report.log",
    conda:
        ENV
    shell:
        "python -m prompt_ot report --params {input.params} --metrics-dir {params.runs}"
        " --published {params.published} --out {params.out} > {log} 2>&1"


if MULTI:

    rule report_backbones:
        input:
            params=PARAMS,
            metrics=metrics_files(),
        output:
            directory(PER_BACKBONE),
        log:
            f"{BASE_RUNS}/logs/report_backbones.log",
        conda:
            ENV
        shell:
            "python -m prompt_ot report-backbones --params {input.params} --out {output} > {log} 2>&1"
