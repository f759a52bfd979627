"""Where `nc_tf.scan_many` runs its tasks: in this process, or as Ray tasks.

A runner takes tasks `(key, function, kwargs)` and calls
`function(x=x, y=y, **kwargs)` for each, passing each result to
`on_result(key, result)`, which may return more tasks. `run_local` runs them
one after another here; `run_ray` as Ray tasks, the images and labels put in
the object store once. Ray (`pip install 'nc-tf[ray]'`) is imported only by
`run_ray`.
"""

import os

_WORKER = {}  # per-process state of `setup_worker`


def setup_worker():
    """Prepares TensorFlow once per process: quiet logs and GPU memory growth."""
    if _WORKER.get("ready"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from nc_tf.cli_output import import_tensorflow_quietly
    from nc_tf.memory import restore_malloc_threshold

    import_tensorflow_quietly()
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is already in use by this process
            pass
    restore_malloc_threshold()
    _WORKER["ready"] = True


def run_local(tasks, on_result, x, y, **_):
    """Runs `tasks` (`(key, function, kwargs)`) one after another in this process.

    `on_result(key, result)` may return more tasks, which run after the others.
    """
    queue = list(tasks)
    while queue:
        key, function, kwargs = queue.pop(0)
        queue += on_result(key, function(x=x, y=y, **kwargs)) or []


def run_ray(tasks, on_result, x, y, address=None, cpus_per_task=1, gpus_per_task=0, max_retries=3):
    """Runs `tasks` (`(key, function, kwargs)`) as Ray tasks; see `run_local`.

    Joins the cluster at `address` (or the one this process already joined;
    without either, starts a local instance, stopped at the end). The images
    and labels go to the object store once. Each task asks for
    `cpus_per_task` CPUs and `gpus_per_task` GPUs and is retried up to
    `max_retries` times when its worker dies; a task that still fails gives
    a `"failed"` result.
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},
        )
    try:
        data = {"x": ray.put(x), "y": ray.put(y)}
        options = dict(num_cpus=cpus_per_task, max_retries=int(max_retries))
        if gpus_per_task:
            options["num_gpus"] = gpus_per_task
        remote = {}
        running = {}

        def submit(key, function, kwargs):
            if function not in remote:
                remote[function] = ray.remote(function).options(**options)
            running[remote[function].remote(**data, **kwargs)] = key

        for task in tasks:
            submit(*task)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            key = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as error:  # the worker died more than max_retries times
                result = {"status": "failed", "wall_s": None, "error": _ray_error(error)}
            for task in on_result(key, result) or []:
                submit(*task)
    finally:
        if started:
            ray.shutdown()


def _ray_error(error):
    """One line for a Ray task failure."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'the task failed'}"


RUNNERS = {"local": run_local, "ray": run_ray}
ENGINES = tuple(RUNNERS)


def require_ray():
    """Imports Ray, or says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "--engine ray needs Ray: pip install 'nc-tf[ray]' (or use --engine local)."
        ) from None
    return ray
