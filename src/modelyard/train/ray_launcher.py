"""``--launcher ray``: the same Lightning job on Ray Train workers.

The driver (this process) has already created the job folder and the MLflow run; each worker
rebuilds the data module and model from the config and trains under ``RayDDPStrategy``; global rank
0 logs metrics to the same run and finishes it. ``RAY_ADDRESS`` names an existing cluster; unset,
``ray.init()`` starts a local instance. On a multi-node cluster ``output_dir`` and the data store
must be on storage every node sees (NFS, a mounted bucket), and modelyard installed on every node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from modelyard.train.config import TrainConfig
from modelyard.train.fit import fit
from modelyard.train.job import Job

__all__ = ["fit_on_ray"]

logger = logging.getLogger(__name__)


def fit_on_ray(cfg: TrainConfig, job: Job, run_id: str | None, uri: str, experiment: str) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda")
    started_here = not ray.is_initialized()
    if started_here:
        # Address from $RAY_ADDRESS when set; otherwise a local instance of our own ("local"): a bare
        # ray.init() would join any `ray start` cluster left running on the machine. Workers must
        # import this package: locally they share our environment, on a cluster it must be installed
        # there. The dashboard (and its job API) only on this machine's loopback, whatever Ray's default.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", logging_level=logging.WARNING,
                 log_to_driver=True, dashboard_host="127.0.0.1")
    logger.info("Ray Train: %d workers (%s) on %s", cfg.num_workers, "GPU" if use_gpu else "CPU",
                os.environ.get("RAY_ADDRESS") or "a local Ray instance")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": cfg.to_dict(), "job_dir": str(job.dir.resolve()), "run_id": run_id,
                           "tracking_uri": uri, "experiment": experiment, "cwd": str(Path.cwd())},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=job.dir.name, storage_path=str((job.dir / "ray").resolve())),
    )
    try:
        trainer.fit()
    finally:
        if started_here:
            ray.shutdown()


def _worker_loop(loop_config: dict[str, Any]) -> None:
    from lightning import seed_everything

    from modelyard.train.data_source import open_data_source  # torch: on the workers only

    if Path(loop_config["cwd"]).is_dir():  # relative store/output paths mean what they mean on the driver
        os.chdir(loop_config["cwd"])
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.from_dict(loop_config["config"])
    seed_everything(cfg.seed_everything, workers=True, verbose=False)
    source = open_data_source(cfg.data, cfg.seed_everything)
    fit(cfg, Job(Path(loop_config["job_dir"])), loop_config["run_id"], loop_config["tracking_uri"],
        loop_config["experiment"], source, ray_worker=True)
