"""lmlens-failure: how likely the model is to get an input wrong, learned from its real failures.

Verbs on ``Analyzer`` (``register_verbs``): ``predict_failure_probability``,
``train_failure_predictor``, ``generate_failure_data``, ``evaluate_failure_predictor``.
The ``failure`` method runs a stored predictor (artifact kind ``failure_predictor``)
over the signals of the shared forward pass.
"""

from lmlens_failure.tasks import Example, Task, register_task, tasks, unregister_task

__version__ = "0.1.0"

__all__ = ["Example", "Task", "__version__", "register_task", "tasks", "unregister_task"]
