"""Training and evaluation on real tasks: task registry, models, loop with checkpoints, metrics, results."""

from .config import TrainConfig, load_yaml_config
from .demo import DEMO_MODELS, run_demo
from .loop import run_name, train
from .tasks import TASKS, Task, load_task, model_names, register_task, task_names, tree_dataset_task

__all__ = [
    "TrainConfig",
    "load_yaml_config",
    "train",
    "Task",
    "TASKS",
    "load_task",
    "task_names",
    "model_names",
    "register_task",
    "tree_dataset_task",
    "run_demo",
    "DEMO_MODELS",
    "run_name",
]
