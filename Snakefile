# prompt-ot pipeline entry point: configuration, includes and the final target only.
#   snakemake --cores all --resources gpu=4              # a 4-GPU workstation
#   snakemake --profile workflow/profiles/slurm          # a SLURM cluster
#   snakemake --directory demo --cores 2                 # the offline demo grid (demo/params.yaml)
# Every rule calls one `python -m prompt_ot <stage>` command; dvc.yaml defines the same jobs.

configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


onstart:
    # one MLflow parent run per pipeline invocation; the store and experiment exist before the fan-out
    shell(f"python -m prompt_ot mlflow init --project-root . --experiment {MLFLOW_EXPERIMENT} --out {MLFLOW_PARENT}")


onsuccess:
    if MLFLOW_DEFER:  # the jobs recorded their runs on disk; log them all now, in one process
        shell(f"python -m prompt_ot mlflow sync {BASE_RUNS} --project-root .")
    shell(f"python -m prompt_ot mlflow finish {MLFLOW_PARENT}")


onerror:
    shell(f"python -m prompt_ot mlflow finish --failed {MLFLOW_PARENT}")


# Every metrics file of the grid is a target of its own, not only an input of the report: Snakemake does not remake
# a deleted intermediate file while the files after it are up to date, so a run folder deleted by hand (to retrain
# it, or to free disk) would otherwise stay missing. As a target it is remade, and the report, whose input it is,
# is rewritten after it.
rule all:
    input:
        REPORT_INDEX,
        metrics_files(),
    default_target: True
