"""What the tests share: builders of models, data, params and workspaces, and the services some tests start.

- ``models``: the tiny shipped CLIP, toy images, reference computations;
- ``data``: generated datasets in the real on-disk layouts, archives, images;
- ``cli``: ``argv``, a command's words from keyword options; ``manifest_and_cache``, the split and train-cache stages;
- ``host_reads``: ``HostReads``, the CPU stand-in for CUDA's sync debug mode;
- ``params``: ``shrunk_params``, the demo's (or the paper grid's) ``params.yaml`` shrunk for a test;
- ``workflow``: workspaces (a copy of the pipeline in a fresh git + DVC folder), running the tools, reading results;
- ``grid``: the session's shrunken grid, built once by Snakemake and copied by the tests that need their own;
- ``forkserver``, ``mlflow_server``, ``slurm_cluster``: the services the system tests start and stop by pid.
"""
