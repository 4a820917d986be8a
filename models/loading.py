"""The network of a checkpoint: read by utils/base/checkpoint.py (the file contract), built here."""
from models.resnetv2 import create_model, load_state_dict_checked
from utils.base.checkpoint import load_checkpoint


def load_network(path, expect_task=None, task=None, head_size=None, model_name=None):
    """The network of a checkpoint, as (model, checkpoint, task, head_size), built with the
    checkpoint's `half_stride`.

    expect_task: the task this stage requires; task / head_size / model_name: what the user
    said, checked against what the checkpoint says, and needed when it says nothing (a
    checkpoint of the original release: its 'module.' prefix is removed and its head loaded
    strictly, so a wrong --head_size is an error, not a random head).
    """
    checkpoint = load_checkpoint(path, expect_task=expect_task)
    if task and checkpoint["task"] and task != checkpoint["task"]:
        raise ValueError(f"--task {task} but {path} is a '{checkpoint['task']}' checkpoint")
    if head_size and checkpoint["head_size"] and head_size != checkpoint["head_size"]:
        raise ValueError(f"--head_size {head_size} does not match {path}, whose head has "
                         f"{checkpoint['head_size']} classes")
    task = checkpoint["task"] or task or expect_task
    head_size = checkpoint["head_size"] or head_size
    if task is None or head_size is None:
        raise ValueError(f"{path} does not say what it is (a checkpoint of the original release?): "
                         f"pass --task cls|dfb and --head_size")
    name = model_name or checkpoint["model_name"] or "BiT-M-R50x1"
    model = create_model(name, head_size=head_size, half_stride=checkpoint["half_stride"])
    load_state_dict_checked(model, checkpoint["model"], str(path))
    if checkpoint["official"]:
        print(f"[checkpoint] {path} is a checkpoint of the original release (no task / classes stored): "
              f"loaded as task {task}, head_size {head_size}, model {name}"
              + (f", step {checkpoint['step']}" if checkpoint["step"] is not None else ""))
    return model, checkpoint, task, head_size
