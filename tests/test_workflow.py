"""The Snakemake and DVC pipelines define the same jobs with the same outputs; the workflow lints clean;
params.yaml errors name the key."""

import subprocess
import sys

import pytest
import yaml

from prompt_ot.config import validate_params
from prompt_ot.errors import UserError
from tests.support.params import few_shot_variant_grid
from tests.support.workflow import ROOT, dvc_jobs, make_workspace, quiet_env, snakemake_jobs


def _same_jobs(folder):
    smk = snakemake_jobs(folder)
    dvc = dvc_jobs(folder)
    assert smk, "Snakemake defined no jobs"
    only_smk = sorted(set(smk) - set(dvc))[:3]
    only_dvc = sorted(set(dvc) - set(smk))[:3]
    assert not only_smk and not only_dvc, f"only in Snakemake: {only_smk}\nonly in DVC: {only_dvc}"
    for cmd in smk:
        assert smk[cmd] == dvc[cmd], f"{cmd}\n snakemake outputs {smk[cmd]}\n dvc outputs {dvc[cmd]}"
    return smk


def test_paper_grid_is_the_same_in_snakemake_and_dvc(tmp_path):
    jobs = _same_jobs(make_workspace(tmp_path))
    methods = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    assert {"cocoop", "maple", "promptsrc", "prompt_ot"} <= set(methods) and len(methods) == 11
    # 15 downloads + 1 backbone + 15 test caches + (11 + 1) x 3 splits and train caches
    # + 11 methods x (11 + 1) x 3 trainings + 11 x 3 x (11 + 1 + 1) evaluations + 1 report
    assert len(jobs) == 15 + 1 + 15 + 36 + 36 + 11 * 12 * 3 + 11 * 3 * 13 + 1
    for method in ("cocoop", "maple", "promptsrc"):  # the new methods' jobs are in both, with the same outputs
        assert sum(f" --method {method} " in cmd for cmd in jobs) == 12 * 3 + 3 * 13


def test_a_shrunken_grid_with_few_shot_and_a_variant_is_the_same(tmp_path):
    params = few_shot_variant_grid()
    validate_params(params)
    jobs = _same_jobs(make_workspace(tmp_path, yaml.safe_dump(params)))
    assert any("--targets dtd eurosat" in cmd for cmd in jobs)
    # few-shot runs only the methods it names (2 of the 6), each over both shots
    assert sum(cmd.startswith("python -m prompt_ot train ") for cmd in jobs) == 6 * 2 * (1 + 1) + 2 * 2 * 2
    few_shot_methods = {cmd.split(" --method ")[1].split()[0] for cmd in jobs if " --protocol few_shot " in cmd}
    assert few_shot_methods == {"coop", "prompt_ot_l1"}


def test_pack_trains_all_seeds_of_a_run_in_one_job_with_the_same_outputs(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = ["caltech101", "dtd"]
    params["methods"] = ["coop", "prompt_ot"]
    params["seeds"] = [1, 2, 3]
    params["protocols"] = {
        "base2novel": {"datasets": ["dtd"], "shots": 4},
        "cross_dataset": {"sources": ["caltech101"], "shots": 2, "evaluate": {"targets": ["dtd"]}},
        "domain_generalization": {"sources": [], "evaluate": {"targets": []}},
        "few_shot": {"datasets": [], "shots": [], "methods": []},
    }
    single = snakemake_jobs(make_workspace(tmp_path / "single", yaml.safe_dump(params)))
    params["train"]["pack"] = True
    validate_params(params)
    packed = snakemake_jobs(make_workspace(tmp_path / "packed", yaml.safe_dump(params)))
    train = {cmd: outs for cmd, outs in packed.items() if cmd.startswith("python -m prompt_ot train ")}
    assert len(train) == 2 * 2  # (method, dataset) pairs, each one job for its 3 seeds
    for cmd, outs in train.items():
        assert " --seed 1 2 3 " in cmd and cmd.count("shot_seed") == 6  # 3 manifests + 3 caches
        assert len(outs) == 6  # prompts + train.json per seed
    # every other job is unchanged, and the packed jobs make exactly the outputs of the single ones
    others = lambda jobs: {c: o for c, o in jobs.items() if not c.startswith("python -m prompt_ot train ")}
    assert others(packed) == others(single)
    single_outs = set().union(*(o for c, o in single.items() if c.startswith("python -m prompt_ot train ")))
    assert set().union(*train.values()) == single_outs


def test_evaluate_pack_evaluates_all_seeds_of_a_run_in_one_job_with_the_same_outputs(tmp_path):
    """evaluate: {pack: true}: one evaluation job per (protocol, method, dataset, shots) for the three seeds, with
    each seed's prompts (and, in domain generalisation, its cross-dataset predictions to reuse) in the seeds' order;
    every other job unchanged, and the packs make exactly the single jobs' outputs."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = ["caltech101", "dtd", "imagenet_v2"]
    params["methods"] = ["coop", "prompt_ot"]
    params["seeds"] = [1, 2, 3]
    params["protocols"] = {
        "base2novel": {"datasets": ["dtd"], "shots": 4},
        "cross_dataset": {"sources": ["caltech101"], "shots": 2, "evaluate": {"targets": ["dtd"]}},
        "domain_generalization": {"sources": ["caltech101"], "evaluate": {"targets": ["imagenet_v2"]}},
        "few_shot": {"datasets": [], "shots": [], "methods": []},
    }
    is_eval = lambda cmd: cmd.startswith("python -m prompt_ot evaluate ")
    single = snakemake_jobs(make_workspace(tmp_path / "single", yaml.safe_dump(params)))
    params["evaluate"] = {**params.get("evaluate", {}), "pack": True}
    validate_params(params)
    packed = snakemake_jobs(make_workspace(tmp_path / "packed", yaml.safe_dump(params)))
    evaluate = {cmd: outs for cmd, outs in packed.items() if is_eval(cmd)}
    assert len(evaluate) == 2 * 3  # (method, protocol) pairs, each one job for its 3 seeds
    for cmd, outs in evaluate.items():
        assert " --seed 1 2 3 " in cmd and len(outs) == 6  # metrics + predictions per seed
        prompts = cmd.split(" --prompts ")[1].split(" --")[0].split()
        assert [p.split("/")[-2] for p in prompts] == ["seed1", "seed2", "seed3"]
        metrics = cmd.split(" --out ")[1].split(" >")[0].split()
        assert [m.split("/")[-2] for m in metrics] == ["seed1", "seed2", "seed3"]
        if " --protocol domain_generalization " in cmd:
            reuse = cmd.split(" --reuse ")[1].split(" --")[0].split()
            assert [r.removesuffix("/predictions.npz") for r in reuse] == [
                p.removesuffix("/prompts.safetensors") for p in prompts
            ]
    others = lambda jobs: {c: o for c, o in jobs.items() if not is_eval(c)}
    assert others(packed) == others(single)
    assert set().union(*evaluate.values()) == set().union(*(o for c, o in single.items() if is_eval(c)))


def test_snakemake_lint_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True, env=quiet_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout, result.stdout


def _params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["train"].update(epochs="forty"), r"train.epochs = 'forty' has the wrong type"),
        (lambda p: p["train"].update(batch_size=0), r"train.batch_size = 0 is invalid"),
        (lambda p: p["protocols"]["base2novel"].update(shots=-2), r"protocols.base2novel.shots = -2"),
        (lambda p: p["train"].update(lr_typo=1), r"unknown key 'lr_typo' under train"),
        (lambda p: p.update(extra=1), r"unknown key 'extra' at the top level"),
        (lambda p: p["methods"].append("coprompt"), r"methods\[11\] = 'coprompt' is not a known method"),
        (lambda p: p["datasets"].append("mnist"), r"datasets\[15\] = 'mnist' is not a known dataset"),
        (lambda p: p["train"].update(precision="fp8"), r"train.precision = 'fp8' is not allowed"),
        (lambda p: p["train"].update(augment_on="gpu"), r"train.augment_on = 'gpu' is not allowed"),
        (lambda p: p["protocols"]["base2novel"]["datasets"].append("imagenet_a"), r"cannot be trained on"),
        (lambda p: p["datasets"].remove("dtd"), r"'dtd' is not listed under 'datasets'"),
        (lambda p: p.update(variants={"x": {"method": "prompt_ot", "regulariser": {"weight": -1}}}), r"variants.x"),
        (lambda p: p["protocols"].pop("few_shot"), r"protocols: 'few_shot' is a required property"),
        (lambda p: p["protocols"]["cross_dataset"]["evaluate"].update(targets=[]), r"evaluate.targets is empty"),
        (
            lambda p: p["protocols"]["few_shot"].update(datasets=["dtd"], methods=["coop", "kgcoop_x"]),
            r"few_shot.methods\[1\] = 'kgcoop_x'",
        ),
        (lambda p: p["protocols"]["few_shot"].pop("methods"), r"few_shot: 'methods' is a required property"),
        (
            lambda p: p["protocols"]["few_shot"].update(datasets=["imagenet"], methods=["coop"]),
            r"imagenet is a cross_dataset source with 16 shots and a few_shot dataset.*cannot declare twice",
        ),
    ],
)
def test_bad_params_name_the_key(change, message):
    params = _params()
    change(params)
    with pytest.raises(UserError, match=message):
        validate_params(params)


def test_the_recipe_in_params_reaches_the_trainer():
    from prompt_ot.config import resolve_run, train_config

    params = _params()
    assert params["recipe"] == "released"  # the paper grid's default
    params["train"].update(augment_on="cpu", deterministic=True, precision="bf16")
    validate_params(params)
    method, recipe = resolve_run(params, "ivlp", "base2novel", "dtd", 16)
    config = train_config(params, recipe, seed=3, device="cpu")
    assert (config.augment_on, config.deterministic, config.precision, config.seed) == ("cpu", True, "bf16", 3)
    # IVLP as PromptSRC's config trains it, with the precision set in params.yaml on top
    assert (config.epochs, config.lr, config.batch_size, config.warmup_lr) == (20, 0.0025, 4, 1e-5)
    assert (method.prompts.text_depth, method.prompts.vision_depth) == (9, 9) and recipe.overridden == ("precision",)


def test_snakemake_refuses_bad_params_before_running(tmp_path):
    params = _params()
    params["seeds"] = [1, 1]
    folder = make_workspace(tmp_path, yaml.safe_dump(params))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1"],
        cwd=folder,
        capture_output=True,
        text=True,
        env=quiet_env(),
    )
    assert result.returncode != 0
    assert "seeds" in (result.stdout + result.stderr)


def test_datasets_declared_in_params_run_in_every_protocol_in_both_pipelines(tmp_path):
    """A folder and a CSV dataset of custom_datasets: base-to-novel, cross-dataset source and target, few-shot and
    domain-generalisation target, the same jobs in Snakemake and DVC; their stages are told the params file."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["custom_datasets"] = {
        "my_folder": {"format": "folder", "path": "my_images", "templates": ["a clip art of a {}.", "a {}."]},
        "my_csv": {"format": "csv", "path": "my_labels.csv", "classnames": {"0": "cat", "1": "dog"}},
    }
    params["dataset_overrides"] = {"dtd": {"templates": "a close-up photo of {} texture."}}
    params["datasets"] = ["dtd", "my_folder", "my_csv"]
    params["methods"] = ["zeroshot", "coop", "prompt_ot"]
    params["seeds"] = [1]
    params["protocols"] = {
        "base2novel": {"datasets": ["my_folder", "dtd"], "shots": 4},
        "cross_dataset": {"sources": ["my_folder"], "shots": 2, "evaluate": {"targets": ["my_csv", "dtd"]}},
        "domain_generalization": {"sources": ["my_folder"], "evaluate": {"targets": ["my_csv"]}},
        "few_shot": {"datasets": ["my_csv"], "shots": [1, 4], "methods": ["zeroshot", "coop"]},
    }
    validate_params(params)
    jobs = _same_jobs(make_workspace(tmp_path, yaml.safe_dump(params)))
    for name in ("my_folder", "my_csv"):
        assert (
            f"python -m prompt_ot download {name} --root data --stamp runs/stamps/{name}.json --params params.yaml"
            in jobs
        )
        assert any(
            cmd.startswith(f"python -m prompt_ot split {name} ") and "--params params.yaml" in cmd for cmd in jobs
        )
    assert any(" --protocol domain_generalization " in cmd and "--targets my_csv" in cmd for cmd in jobs)
    assert sum(" --protocol few_shot " in cmd and cmd.startswith("python -m prompt_ot train ") for cmd in jobs) == 4
