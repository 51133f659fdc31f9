"""The local backend's parts, one concept per module; ``pipelines.local_backend.LocalBackend`` puts them together.

results   what a run reports (StepResult, PipelineResult) and LocalRunError
hashing   content hashes of files and folders, memoised across runs
inputs    dependency order, and each input's local value and cache identity
commands  ``${{inputs.*}}`` / ``${{outputs.*}}`` / ``$[[...]]`` rendering, as Azure ML does
snapshot  the component's code folder plus its additional_includes, as Azure ML uploads them
cache     the step cache: key, step folder, completion marker
environ   the environment a step's command runs with
launch    one bash process per step, or the ranks of a ``distribution: pytorch`` step (ranks)
"""
