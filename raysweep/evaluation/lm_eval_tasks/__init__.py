"""raysweep's local lm-eval-harness tasks: lm-eval's own WMDP and MMLU task settings (prompt,
description, choices, metric) over the JSON Lines files of a local data root (``wmdp/``,
``mmlu/``), since no hub is reachable where the sweeps run. The data root reaches the tasks as
lm-eval metadata (``TaskManager(metadata={"data_root": ...})``; on lm-eval's command line
``--include_path raysweep/evaluation/lm_eval_tasks --metadata '{"data_root": "..."}'``)."""
