"""Supervised LoRA fine-tuning of a served model on the platform's own Ray cluster.

`settings` (typed LoRA / training / worker settings, the Gemma guide's values as defaults), `dataset` (JSONL chat
conversations, validated line by line, rendered with the model's chat template, loss on assistant tokens only),
`training` (the per-worker training function: peft + transformers.Trainer, writes a standard PEFT adapter
directory) and `ray_job` (runs it as a Ray Train job and reports step, loss and ETA).
"""
